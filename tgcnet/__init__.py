"""tgcnet: text-guided medical image segmentation on a frozen CLIP."""
__version__ = "0.1.0"
