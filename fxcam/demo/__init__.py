"""Offline demo: procedural toy scenes and two small pretrained models (no downloads).

>>> from fxcam.demo import make_scenes, load_demo_model, DEFAULT_LAYERS
>>> images, labels, masks = make_scenes(8, seed=1)   # float32 (8, 3, 96, 96) in [0, 1]
>>> model = load_demo_model("cnn")                   # normalizes internally
>>> model(images).argmax(1)                          # == labels (mostly)

``masks`` are the ground-truth object pixels, for localization metrics such as the
pointing game. ``examples/train_demo.py`` regenerates the shipped weights.
"""

from .models import DEFAULT_LAYERS, DemoCNN, DemoViT, load_demo_model
from .scenes import CLASSES, IMAGE_SIZE, MEAN, STD, make_scenes, standardize

__all__ = [
    "CLASSES",
    "DEFAULT_LAYERS",
    "DemoCNN",
    "DemoViT",
    "IMAGE_SIZE",
    "MEAN",
    "STD",
    "load_demo_model",
    "make_scenes",
    "standardize",
]
