"""visiondistill: inspectable knowledge distillation for computer vision on PyTorch Lightning."""

__version__ = "0.1.0"
