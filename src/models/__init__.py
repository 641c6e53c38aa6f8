"""Segmentation models: logits on the label grid, (B, out_channels, H / cell_px, W / cell_px)."""

from src.models.fcn_resnet_transfer import FCNResnetTransfer
from src.models.registry import MODEL_TYPES, build_model, model_hparams
from src.models.segmentation_cnn import SegmentationCNN, default_pool_sizes
from src.models.unet import UNet

__all__ = [
    "MODEL_TYPES",
    "FCNResnetTransfer",
    "SegmentationCNN",
    "UNet",
    "build_model",
    "default_pool_sizes",
    "model_hparams",
]
