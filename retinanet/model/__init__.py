"""RetinaNet model: ``build_model``, ``RetinaNet``, ``load_torchvision_weights`` (torchvision's
state_dicts; our checkpoints: ``retinanet.engine.runtime.checkpoint``)."""

from retinanet.model.retinanet import ARCHS, RetinaNet, build_model, check_anchor_sizes, check_arch, check_input_size
from retinanet.model.weights import load_torchvision_weights

__all__ = ["ARCHS", "RetinaNet", "build_model", "check_anchor_sizes", "check_arch", "check_input_size", "load_torchvision_weights"]
