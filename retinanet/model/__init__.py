"""RetinaNet model: ``build_model``, ``load_weights``, ``RetinaNet``."""

from retinanet.model.retinanet import ARCHS, RetinaNet, build_model
from retinanet.model.weights import load_weights

__all__ = ["ARCHS", "RetinaNet", "build_model", "load_weights"]
