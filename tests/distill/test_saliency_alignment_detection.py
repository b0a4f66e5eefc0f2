"""SaliencyAlignment on a detector: the teacher's detections are explained, and the term trains the student."""

from __future__ import annotations

import torch

from visiondistill.core.adapters.detection import DetectionScores
from visiondistill.explain import DetectionSaliencyAdapter
from visiondistill.models.detectors import create_detector

from ..support.detection import TINY_STUDENT


def test_target_scores_equal_the_cam_target_on_the_dense_output():
    torch.manual_seed(0)
    detector = create_detector(TINY_STUDENT, num_classes=2).eval()
    images = torch.rand(2, 3, 64, 64)
    adapter = DetectionSaliencyAdapter(boxes="true")
    batch = (images, [{"boxes": torch.tensor([[8.0, 8.0, 30.0, 30.0]]), "labels": torch.tensor([1])}] * 2)
    categories = torch.tensor([1, 1])
    output = detector(images)
    scores = adapter.target_scores(output, categories, batch)
    dense = DetectionScores(detector)(images)
    expected = torch.stack([t(dense[i]) for i, t in enumerate(adapter.targets(categories, batch))])
    torch.testing.assert_close(scores, expected)
    assert scores.requires_grad
