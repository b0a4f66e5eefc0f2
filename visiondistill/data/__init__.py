"""Data: the synthetic shapes generator and writers, albumentations pipelines and Lightning data modules."""

from visiondistill.data.classification import ImageFolderClassification, ImageFolderDataset, ShapesClassification
from visiondistill.data.dafl import DAFL, DAFLSettings, TeacherWithoutClassifierError
from visiondistill.data.datafree import DataFreeClassification
from visiondistill.data.datafree_dafl import DAFLDataFreeClassification
from visiondistill.data.detection import CocoDetection, CocoDetectionDataset, ShapesDetection, detection_transforms
from visiondistill.data.errors import CorruptImageError, DataError, MissingDataError
from visiondistill.data.inversion import DeepInversion, InversionSettings, TeacherWithoutBatchNormError
from visiondistill.data.keypoints import COCOKeypoints, KeypointCrops, ShapesKeypoints
from visiondistill.data.medical import LesionGenerator, SyntheticLesions
from visiondistill.data.multitask import ShapesMultiTask
from visiondistill.data.segmentation import (
    MaskFolderDataset,
    MaskFolderSegmentation,
    ShapesSegmentation,
    segmentation_transforms,
)
from visiondistill.data.shapes import MAX_KEYPOINTS, SHAPE_CLASSES, ShapeObject, ShapesGenerator, ShapesSample
from visiondistill.data.synthesize import write_shapes_dataset
from visiondistill.data.transforms import classification_transforms

__all__ = [
    "MAX_KEYPOINTS",
    "SHAPE_CLASSES",
    "COCOKeypoints",
    "CocoDetection",
    "CocoDetectionDataset",
    "CorruptImageError",
    "DataError",
    "DAFL",
    "DAFLDataFreeClassification",
    "DAFLSettings",
    "DataFreeClassification",
    "DeepInversion",
    "ImageFolderClassification",
    "ImageFolderDataset",
    "InversionSettings",
    "KeypointCrops",
    "LesionGenerator",
    "MaskFolderDataset",
    "MaskFolderSegmentation",
    "MissingDataError",
    "ShapeObject",
    "ShapesClassification",
    "ShapesDetection",
    "ShapesGenerator",
    "ShapesKeypoints",
    "ShapesMultiTask",
    "ShapesSample",
    "ShapesSegmentation",
    "SyntheticLesions",
    "TeacherWithoutBatchNormError",
    "TeacherWithoutClassifierError",
    "classification_transforms",
    "detection_transforms",
    "segmentation_transforms",
    "write_shapes_dataset",
]
