"""Top-down keypoint data: instance crops from COCO keypoint annotations, Gaussian target heatmaps, data modules.

- `geometry`: flip pairs, the crop around a box, affine maps and target heatmaps (coordinate conventions);
- `coco`: the COCO keypoint reader and its rules for imperfect annotations;
- `dataset`: `KeypointCrops`, one augmented crop with its heatmaps per annotated instance;
- `datamodules`: `COCOKeypoints` and `ShapesKeypoints` (the extreme tips of the synthetic shapes).

The public names of all four are importable from here.
"""

from visiondistill.data.keypoints.coco import (
    CocoKeypointsFile,
    KeypointConverter,
    KeypointInstance,
    read_coco_keypoints,
)
from visiondistill.data.keypoints.datamodules import (
    SHAPE_FLIP_PAIRS,
    SHAPE_KEYPOINT_NAMES,
    SHAPE_TIPS,
    COCOKeypoints,
    ShapesKeypoints,
    extreme_tips,
)
from visiondistill.data.keypoints.dataset import KeypointCrops
from visiondistill.data.keypoints.geometry import (
    apply_affine,
    check_flip_pairs,
    crop_matrix,
    flip_permutation,
    gaussian_heatmaps,
    invert_affine,
    pixel_centre_matrix,
)

__all__ = [
    "SHAPE_FLIP_PAIRS",
    "SHAPE_KEYPOINT_NAMES",
    "SHAPE_TIPS",
    "COCOKeypoints",
    "CocoKeypointsFile",
    "KeypointConverter",
    "KeypointCrops",
    "KeypointInstance",
    "ShapesKeypoints",
    "apply_affine",
    "check_flip_pairs",
    "crop_matrix",
    "extreme_tips",
    "flip_permutation",
    "gaussian_heatmaps",
    "invert_affine",
    "pixel_centre_matrix",
    "read_coco_keypoints",
]
