"""Pretrained weights: the checkpoint registry, loaders and converters."""

from .assign import assign_in_order, leaf_layers, transfer_from_keras_model
from .download import WeightsDownloadError
from .loading import load_file
from .registry import Checkpoint, get_checkpoint, register_checkpoint
from .timm import load_timm_state_dict
from .torchvision import load_torchvision_state_dict

__all__ = [
    "Checkpoint",
    "WeightsDownloadError",
    "assign_in_order",
    "get_checkpoint",
    "leaf_layers",
    "load_file",
    "load_timm_state_dict",
    "load_torchvision_state_dict",
    "register_checkpoint",
    "transfer_from_keras_model",
]
