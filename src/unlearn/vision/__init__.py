"""Class forgetting for vision transformers (``ViTForImageClassification``): the selective-pruning paper's vision
experiment, with SSD, gradient ascent and a random-pruning control beside it. See ``docs/vision.md``."""

from .data import ImageSplit, Images, digits
from .forget import METHODS, Forgotten, VisionForgetConfig, forget_class, image_statistics
from .model import accuracy, losses, mia_auc, tiny_vit, train

__all__ = [
    "METHODS",
    "Forgotten",
    "ImageSplit",
    "Images",
    "VisionForgetConfig",
    "accuracy",
    "digits",
    "forget_class",
    "image_statistics",
    "losses",
    "mia_auc",
    "tiny_vit",
    "train",
]
