"""Replayable augmentation views: the same (sample, view) gives the same tensor in any process and any epoch."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from visiondistill.data import ShapesClassification
from visiondistill.data.views import ReplayableViews, ViewSampler, epoch_views, view_seed

pytestmark = pytest.mark.filterwarnings("ignore:.*has no images of class", "ignore:.*num_workers")


@pytest.fixture(scope="module")
def views(tmp_path_factory) -> ReplayableViews:
    data_dir = tmp_path_factory.mktemp("views") / "shapes"
    module = ShapesClassification(
        str(data_dir), image_size=32, batch_size=4, num_workers=0, num_train=12, num_val=6, num_test=0, num_views=3
    )
    module.prepare_data()
    module.setup("fit")
    assert isinstance(module.train_dataset, ReplayableViews)
    return module.train_dataset


def test_a_view_replays_bit_identically_in_the_main_process_and_in_a_worker(views):
    first = views.view(5, 1)
    assert torch.equal(views.view(5, 1), first)
    # views of one image differ (the augmentation is random per view), so equality above is not trivial
    assert not torch.equal(views.view(5, 2), first)
    loader = DataLoader(views, batch_size=3, sampler=[(4, 0), (5, 1), (5, 2)], num_workers=1)
    images, labels, ids = next(iter(loader))
    assert ids.tolist() == [[4, 0], [5, 1], [5, 2]]
    assert torch.equal(images[1], first)
    assert torch.equal(images[2], views.view(5, 2))
    assert labels[1] == views.dataset.samples[5][1]


def test_seeds_depend_on_data_seed_sample_and_view():
    seeds = {view_seed(s, i, v) for s in (0, 1) for i in (0, 1) for v in (0, 1)}
    assert len(seeds) == 8
    assert view_seed(3, 4, 5) == view_seed(3, 4, 5)


def test_the_sampler_shows_every_sample_once_per_epoch_in_that_epochs_view():
    sampler = ViewSampler(50, num_views=4, seed=7)
    first = list(sampler)
    assert sorted(index for index, _ in first) == list(range(50))
    assert list(sampler) == first  # the same epoch replays
    expected = epoch_views(7, 0, 50, 4)
    assert all(view == int(expected[index]) for index, view in first)
    sampler.set_epoch(1)
    second = list(sampler)
    assert dict(second) != dict(first)  # other views (and order) in another epoch
    assert {view for _, view in first + second} == {0, 1, 2, 3}
