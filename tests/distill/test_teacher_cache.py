"""The teacher-output cache: what it stores equals the teacher on the same view, it refuses another teacher or data
set, and a cached epoch runs no teacher forward."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from visiondistill.data import ShapesClassification
from visiondistill.distill import AttentionTransfer, LogitDistillation, TeacherCacheError, TeacherOutputCache, losses
from visiondistill.distill.cache import dense_logits, topk_logits
from visiondistill.tasks import ClassificationTask

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*has no images of class", "ignore:.*num_workers", "ignore:.*does not have many workers"
)


def shapes(data_dir, **kwargs) -> ShapesClassification:
    settings = {"image_size": 32, "batch_size": 8, "num_workers": 0, "num_train": 16, "num_val": 6, "num_test": 0}
    module = ShapesClassification(str(data_dir), **{**settings, "num_views": 2, **kwargs})
    module.prepare_data()
    module.setup("fit")
    return module


def task(seed: int = 0) -> ClassificationTask:
    torch.manual_seed(seed)
    return ClassificationTask(student={"name": "test_resnet"}, teacher={"name": "test_resnet"}, num_classes=6)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache") / "shapes"


@pytest.mark.parametrize("top_k", [None, 3], ids=["full", "top3"])
def test_a_cached_output_equals_a_fresh_teacher_forward_on_the_same_view(data_dir, tmp_path, top_k):
    data, teacher = shapes(data_dir), task().teacher
    cache = TeacherOutputCache(directory=str(tmp_path / "cache"), top_k=top_k)
    assert cache.fill(teacher, data.train_dataset, batch_size=8) == 16 * 2
    ids = torch.tensor([[3, 0], [3, 1], [11, 1]])
    with torch.no_grad():
        fresh = teacher(torch.stack([data.train_dataset.view(int(i), int(v)) for i, v in ids]))
    # a new cache object reads the shards back from disk
    stored = TeacherOutputCache(directory=str(tmp_path / "cache"), top_k=top_k).open(teacher, data.train_dataset)
    cached = stored.lookup(ids)
    assert cached is not None
    if top_k is None:
        torch.testing.assert_close(cached, fresh, atol=2e-3 * fresh.abs().max().item(), rtol=1e-3)
    else:
        kept = fresh.topk(top_k, dim=1).indices
        assert torch.equal(cached.topk(top_k, dim=1).indices, kept)  # the same classes, in the same order
        torch.testing.assert_close(
            cached.gather(1, kept), fresh.gather(1, kept), atol=2e-3 * fresh.abs().max().item(), rtol=1e-3
        )
        # at T = 1 the kept classes have the teacher's exact probabilities (the others share the rest)
        torch.testing.assert_close(
            cached.softmax(1).gather(1, kept), fresh.softmax(1).gather(1, kept), atol=1e-3, rtol=0
        )


def test_top_k_kd_equals_full_kd_when_k_is_the_class_count():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 7), 3 * torch.randn(5, 7)
    full = losses.kd_loss(student, teacher, temperature=4.0)
    topk = losses.kd_loss(student, dense_logits(*topk_logits(teacher, 7), 7), temperature=4.0)
    torch.testing.assert_close(topk, full)
    assert not torch.allclose(losses.kd_loss(student, dense_logits(*topk_logits(teacher, 2), 7), 4.0), full)


def test_the_cache_refuses_another_teacher_and_another_data_set(data_dir, tmp_path):
    data = shapes(data_dir)
    directory = str(tmp_path / "cache")
    TeacherOutputCache(directory=directory).fill(task(0).teacher, data.train_dataset)
    with pytest.raises(TeacherCacheError, match="teacher's weights") as error:
        TeacherOutputCache(directory=directory).open(task(1).teacher, data.train_dataset)
    assert directory in str(error.value) and "delete" in str(error.value)
    other = shapes(tmp_path / "other", num_train=12)
    with pytest.raises(TeacherCacheError, match="data set"):
        TeacherOutputCache(directory=directory).open(task(0).teacher, other.train_dataset)
    with pytest.raises(TeacherCacheError, match="num_views"):
        TeacherOutputCache(directory=directory).open(task(0).teacher, shapes(data_dir, num_views=3).train_dataset)


class TeacherForwards(pl.Callback):
    """Counts the teacher's forward passes in each training epoch (a forward hook)."""

    def __init__(self) -> None:
        self.per_epoch: list[int] = []
        self.ids: list[list[list[int]]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        pl_module.teacher.register_forward_hook(lambda *_: self.per_epoch.__setitem__(-1, self.per_epoch[-1] + 1))

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.per_epoch.append(0)
        self.ids.append([])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.ids[-1] += batch[2].tolist()


@pytest.mark.parametrize("feature_term", [False, True], ids=["kd", "kd+at"])
def test_a_cached_run_skips_the_teacher_once_every_view_is_cached(data_dir, trainer_kwargs, feature_term):
    data = shapes(data_dir, num_views=1)  # one view: the first epoch sees every (sample, view) the second one does
    counter, cache = TeacherForwards(), TeacherOutputCache()
    callbacks = [LogitDistillation(), cache, counter]
    if feature_term:
        callbacks.append(AttentionTransfer(weight=1.0))
    trainer = pl.Trainer(**{**trainer_kwargs, "max_epochs": 2, "limit_val_batches": 0}, callbacks=callbacks)
    if feature_term:
        with pytest.warns(UserWarning, match="teacher still runs"):
            trainer.fit(task(), datamodule=data)
        assert counter.per_epoch == [2, 2]  # 16 images in batches of 8, teacher on every step
    else:
        trainer.fit(task(), datamodule=data)
        assert counter.per_epoch == [2, 0]
        assert (cache.teacher_forwards, cache.cached_steps) == (2, 2)
    assert len(cache.store) == 16


def test_each_epoch_shows_its_own_views_and_the_cache_fills_as_they_come(data_dir, trainer_kwargs):
    data = shapes(data_dir, num_views=4)
    counter, cache = TeacherForwards(), TeacherOutputCache()
    trainer = pl.Trainer(
        **{**trainer_kwargs, "max_epochs": 2, "limit_val_batches": 0},
        callbacks=[LogitDistillation(), cache, counter],
    )
    trainer.fit(task(), datamodule=data)
    first, second = (dict(map(tuple, ids)) for ids in counter.ids)
    assert sorted(first) == sorted(second) == list(range(16))
    assert first != second  # Lightning set the sampler's epoch: other views in epoch 2
    assert len(cache.store) == len(set(first.items()) | set(second.items()))
    assert cache.teacher_images == len(cache.store)  # the teacher ran once per (sample, view), never on cached rows
    assert 0 < counter.per_epoch[1] <= 2
