"""The teacher-output cache for segmentation and detection: views replay image and mask (or boxes) together, a cached
output equals a fresh teacher forward on the same view, a second epoch runs no teacher, a changed teacher or data set
is refused."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch

from visiondistill.data import ShapesDetection, ShapesSegmentation
from visiondistill.distill import (
    ChannelWiseDistillation,
    DetectionLogitDistillation,
    FeatureImitation,
    PixelwiseDistillation,
    TeacherCacheError,
    TeacherOutputCache,
)
from visiondistill.distill.cache import CachedDetectorOutput
from visiondistill.tasks import DetectionTask, SegmentationTask

from ..support import detection as tiny_detection
from ..support.segmentation import TINY_STUDENT, TINY_TEACHER

pytestmark = pytest.mark.filterwarnings("ignore:.*num_workers", "ignore:.*does not have many workers")

SMALL = {"batch_size": 4, "num_workers": 0, "num_train": 8, "num_val": 4, "num_test": 0}


def segmentation_data(data_dir, num_views: int = 2) -> ShapesSegmentation:
    module = ShapesSegmentation(str(data_dir), image_size=32, num_views=num_views, verify=False, **SMALL)
    module.prepare_data()
    module.setup("fit")
    return module


def detection_data(data_dir, num_views: int = 2) -> ShapesDetection:
    module = ShapesDetection(str(data_dir), image_size=64, num_views=num_views, **SMALL)
    module.prepare_data()
    module.setup("fit")
    return module


def segmentation_task(seed: int = 0) -> SegmentationTask:
    torch.manual_seed(seed)
    return SegmentationTask(student=TINY_STUDENT, teacher=TINY_TEACHER, num_classes=7, ignore_index=None)


def detection_task(seed: int = 0) -> DetectionTask:
    torch.manual_seed(seed)
    return DetectionTask(student=tiny_detection.TINY_STUDENT, teacher=tiny_detection.TINY_TEACHER, num_classes=6)


@pytest.fixture(scope="module")
def seg_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("seg_cache") / "shapes"


@pytest.fixture(scope="module")
def det_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("det_cache") / "shapes"


def test_a_segmentation_view_replays_image_and_mask_together(seg_dir):
    views = segmentation_data(seg_dir, num_views=3).train_dataset
    image, mask, view_id = views[(2, 1)]
    again_image, again_mask, _ = views[(2, 1)]
    assert torch.equal(image, again_image) and torch.equal(mask, again_mask)
    assert view_id.tolist() == [2, 1]
    other_image, other_mask, _ = views[(2, 2)]
    assert not torch.equal(image, other_image)
    assert not torch.equal(mask, other_mask)  # the mask moved with its image: the geometry differs between views
    # the mask is the one of the very draw that made the image: rendering the view without the seed differs
    plain_image, plain_mask = views.dataset[2]
    assert not (torch.equal(plain_image, image) and torch.equal(plain_mask, mask))


def test_a_detection_view_replays_image_and_boxes_together(det_dir):
    views = detection_data(det_dir, num_views=3).train_dataset
    image, target, view_id = views[(1, 2)]
    again_image, again_target, _ = views[(1, 2)]
    assert torch.equal(image, again_image) and torch.equal(target["boxes"], again_target["boxes"])
    assert view_id.tolist() == [1, 2]
    loader = detection_data(det_dir, num_views=3).train_dataloader()
    images, targets, ids = next(iter(loader))
    assert ids.shape == (4, 2) and len(targets) == 4
    first = ids[0].tolist()
    assert torch.equal(images[0], views[tuple(first)][0])
    assert torch.equal(targets[0]["boxes"], views[tuple(first)][1]["boxes"])


def _fresh(teacher, views, ids):
    teacher.eval()
    with torch.no_grad():
        return teacher(torch.stack([views.view(int(i), int(v)) for i, v in ids]))


def test_a_cached_segmentation_map_equals_a_fresh_teacher_forward_on_the_same_view(seg_dir, tmp_path):
    data, teacher = segmentation_data(seg_dir), segmentation_task().teacher
    cache = TeacherOutputCache(directory=str(tmp_path / "cache"))
    assert cache.fill(teacher, data.train_dataset, batch_size=4) == 8 * 2
    ids = torch.tensor([[3, 0], [3, 1], [7, 1]])
    fresh = _fresh(teacher, data.train_dataset, ids)
    stored = TeacherOutputCache(directory=str(tmp_path / "cache")).open(teacher, data.train_dataset)
    cached = stored.serve(ids)
    assert cached.shape == fresh.shape == (3, 7, 32, 32)  # full resolution, every class
    torch.testing.assert_close(cached, fresh, atol=2e-3 * fresh.abs().max().item(), rtol=1e-3)
    # the terms read the cached map as they read the live one
    for term in (PixelwiseDistillation(temperature=2.0), ChannelWiseDistillation(tau=1.0)):
        student = torch.randn_like(fresh)
        live, served = (term.compute_loss(None, (None,), student, t) for t in (fresh, cached))
        torch.testing.assert_close(served, live, atol=1e-3, rtol=1e-3)


def test_a_cached_detector_output_equals_a_fresh_teacher_forward_on_the_same_view(det_dir, tmp_path):
    data, teacher = detection_data(det_dir), detection_task().teacher
    cache = TeacherOutputCache(directory=str(tmp_path / "cache"))
    assert cache.fill(teacher, data.train_dataset, batch_size=4) == 8 * 2
    ids = torch.tensor([[0, 1], [5, 0]])
    fresh = _fresh(teacher, data.train_dataset, ids)
    served = TeacherOutputCache(directory=str(tmp_path / "cache")).open(teacher, data.train_dataset).serve(ids)
    assert isinstance(served, CachedDetectorOutput)
    assert served.cls_logits.shape == fresh.cls_logits.shape
    scale = fresh.cls_logits.abs().max().item()
    torch.testing.assert_close(served.cls_logits, fresh.cls_logits, atol=2e-3 * scale, rtol=1e-3)
    term = DetectionLogitDistillation(temperature=2.0)
    student = CachedDetectorOutput(torch.randn_like(fresh.cls_logits))
    live, cached = (term.compute_loss(None, None, student, t) for t in (fresh, served))
    torch.testing.assert_close(cached, live, atol=1e-3, rtol=1e-3)


class TeacherForwards(pl.Callback):
    """Counts the teacher's forwards in each training epoch."""

    def __init__(self) -> None:
        self.per_epoch: list[int] = []

    def on_train_start(self, trainer, pl_module) -> None:
        pl_module.teacher.register_forward_hook(lambda *_: self.per_epoch.__setitem__(-1, self.per_epoch[-1] + 1))

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.per_epoch.append(0)


def test_the_second_segmentation_epoch_runs_no_teacher(seg_dir, trainer_kwargs):
    data, counter, cache = segmentation_data(seg_dir, num_views=1), TeacherForwards(), TeacherOutputCache()
    callbacks = [PixelwiseDistillation(), ChannelWiseDistillation(), cache, counter]
    trainer = pl.Trainer(**{**trainer_kwargs, "max_epochs": 2, "limit_val_batches": 0}, callbacks=callbacks)
    trainer.fit(segmentation_task(), datamodule=data)
    assert counter.per_epoch == [2, 0]  # 8 images in batches of 4: the teacher on the first epoch's steps only
    assert (cache.teacher_forwards, cache.cached_steps, len(cache.store)) == (2, 2, 8)


@pytest.mark.parametrize("feature_term", [False, True], ids=["det_kd", "det_kd+fgd"])
def test_the_second_detection_epoch_runs_no_teacher_unless_a_feature_term_needs_it(
    det_dir, trainer_kwargs, feature_term
):
    data, counter, cache = detection_data(det_dir, num_views=1), TeacherForwards(), TeacherOutputCache()
    callbacks = [DetectionLogitDistillation(), cache, counter] + ([FeatureImitation()] if feature_term else [])
    trainer = pl.Trainer(**{**trainer_kwargs, "max_epochs": 2, "limit_val_batches": 0}, callbacks=callbacks)
    if feature_term:
        with pytest.warns(UserWarning, match="FeatureImitation|fgd"):
            trainer.fit(detection_task(), datamodule=data)
        assert counter.per_epoch == [2, 2]
    else:
        trainer.fit(detection_task(), datamodule=data)
        assert counter.per_epoch == [2, 0]
    assert len(cache.store) == 8 and cache.store.detector


def test_the_cache_refuses_another_segmentation_teacher_or_changed_masks(seg_dir, tmp_path):
    data = segmentation_data(seg_dir)
    folder = tmp_path / "cache"
    TeacherOutputCache(directory=str(folder)).fill(segmentation_task(0).teacher, data.train_dataset, batch_size=8)
    with pytest.raises(TeacherCacheError, match="teacher's weights"):
        TeacherOutputCache(directory=str(folder)).open(segmentation_task(1).teacher, data.train_dataset)
    mask = data.train_dataset.dataset.samples[0][1]
    original = mask.read_bytes()
    try:
        mask.write_bytes(original + b"\0")  # another mask file (a size is enough to tell)
        with pytest.raises(TeacherCacheError, match="the data set"):
            TeacherOutputCache(directory=str(folder)).open(segmentation_task(0).teacher, data.train_dataset)
    finally:
        mask.write_bytes(original)


def test_the_cache_refuses_another_detector_or_changed_boxes(det_dir, tmp_path):
    data = detection_data(det_dir)
    folder = tmp_path / "cache"
    TeacherOutputCache(directory=str(folder)).fill(detection_task(0).teacher, data.train_dataset, batch_size=8)
    with pytest.raises(TeacherCacheError, match="teacher's weights"):
        TeacherOutputCache(directory=str(folder)).open(detection_task(1).teacher, data.train_dataset)
    annotations = data.train_dataset.dataset.annotation_file
    original = annotations.read_text()
    try:
        content = json.loads(original)
        content["annotations"][0]["bbox"][0] += 1.0  # one box moved by a pixel
        annotations.write_text(json.dumps(content))
        with pytest.raises(TeacherCacheError, match="the data set"):
            TeacherOutputCache(directory=str(folder)).open(detection_task(0).teacher, data.train_dataset)
    finally:
        annotations.write_text(original)


def test_top_k_is_refused_for_segmentation_maps_by_name(seg_dir):
    data = segmentation_data(seg_dir)
    with pytest.raises(TeacherCacheError, match=r"top_k.*segmentation map.*top_k: null"):
        TeacherOutputCache(top_k=3).fill(segmentation_task().teacher, data.train_dataset, batch_size=8)
