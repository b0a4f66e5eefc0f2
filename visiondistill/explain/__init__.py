"""Explanation callbacks and metrics: does the student look where the teacher looks?

- `GradCAMCallback`: teacher and student CAMs (grad-cam) on a fixed probe batch, their agreement
  (``val/saliency/*``), TensorBoard grids, PNGs and ``maps.npz`` in the run folder;
- `FeatureMapCallback`: attention-transfer distance, attention cosine and CKA of matched feature layers
  (``val/attention/*``) with attention-map grids;
- `metrics`: the agreement measures as pure functions and torchmetrics `Metric` classes;
- `cam`: grad-cam methods by name and safe CAM computation (per image, per layer);
- `attribution`: Captum methods (integrated gradients, occlusion, KernelSHAP, LIME) as CAM-form maps;
- `faithfulness`, `sanity`, `robustness`: is a map faithful to its model, does it react to randomised weights, does
  it hold under small input changes (definitions in docs/metrics.md);
- `render`: overlays and grids.

The saliency adapters (what each task's CAM explains) live in `visiondistill.core` and are re-exported here.
"""

from visiondistill.core.adapters import (
    BoxScoreTarget,
    ClassRegionTarget,
    DetectionSaliencyAdapter,
    KeypointPeakTarget,
    KeypointSaliencyAdapter,
    SegmentationSaliencyAdapter,
)
from visiondistill.core.saliency import (
    SALIENCY_ADAPTERS,
    ClassificationSaliencyAdapter,
    SaliencyAdapter,
    TokenReshape,
    register_saliency_adapter,
    saliency_adapter_for,
)
from visiondistill.explain.attribution import ATTRIBUTION_METHODS, compute_attributions, network_maps
from visiondistill.explain.cam import CAM_METHODS, cam_method, compute_cams, compute_layer_cams
from visiondistill.explain.detection import detection_teacher_agreement
from visiondistill.explain.faithfulness import FAITHFULNESS_KEYS, faithfulness_scores
from visiondistill.explain.feature_maps import FeatureMapCallback
from visiondistill.explain.gradcam import GradCAMCallback
from visiondistill.explain.keypoints import keypoint_grid, keypoint_teacher_agreement
from visiondistill.explain.metrics import (
    SALIENCY_KEYS,
    AttentionAgreement,
    LinearCKA,
    PointingGame,
    SaliencyAgreement,
    attention_cosine,
    attention_distance,
    attention_map,
    boxes_to_masks,
    linear_cka,
    pointing_game,
    pointing_game_hits,
    saliency_agreement,
    saliency_agreement_per_image,
)
from visiondistill.explain.probe import ProbeBatch, ProbeCallback, draw_probe_batch, untouched_training_state
from visiondistill.explain.render import comparison_grid, encode_png, overlay, render_grid, saliency_grid, save_png
from visiondistill.explain.robustness import max_sensitivity, pgd_explanation_shift
from visiondistill.explain.sanity import cascading_randomisation
from visiondistill.explain.segmentation import segmentation_teacher_agreement

__all__ = [
    "ATTRIBUTION_METHODS",
    "CAM_METHODS",
    "FAITHFULNESS_KEYS",
    "SALIENCY_ADAPTERS",
    "SALIENCY_KEYS",
    "AttentionAgreement",
    "BoxScoreTarget",
    "ClassRegionTarget",
    "ClassificationSaliencyAdapter",
    "DetectionSaliencyAdapter",
    "FeatureMapCallback",
    "GradCAMCallback",
    "KeypointPeakTarget",
    "KeypointSaliencyAdapter",
    "LinearCKA",
    "PointingGame",
    "ProbeBatch",
    "ProbeCallback",
    "SaliencyAdapter",
    "SaliencyAgreement",
    "SegmentationSaliencyAdapter",
    "TokenReshape",
    "attention_cosine",
    "attention_distance",
    "attention_map",
    "boxes_to_masks",
    "cam_method",
    "cascading_randomisation",
    "comparison_grid",
    "compute_attributions",
    "compute_cams",
    "compute_layer_cams",
    "detection_teacher_agreement",
    "draw_probe_batch",
    "encode_png",
    "faithfulness_scores",
    "keypoint_grid",
    "keypoint_teacher_agreement",
    "linear_cka",
    "max_sensitivity",
    "network_maps",
    "overlay",
    "pgd_explanation_shift",
    "pointing_game",
    "pointing_game_hits",
    "register_saliency_adapter",
    "render_grid",
    "saliency_adapter_for",
    "saliency_agreement",
    "saliency_agreement_per_image",
    "saliency_grid",
    "segmentation_teacher_agreement",
    "save_png",
    "untouched_training_state",
]
