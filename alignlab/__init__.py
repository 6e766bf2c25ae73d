"""alignlab: aligning text-to-image diffusion models with their prompts."""

from alignlab._torchvision_compat import ensure_torchvision_importable

ensure_torchvision_importable()

__version__ = "0.1.0"
