"""retinanet: train, evaluate, run and export RetinaNet object detectors.

    model = retinanet.build_model("resnet50_fpn", num_classes=21)
    skipped = retinanet.load_weights(model, "retinanet_resnet50_fpn_coco.pth")
    model.eval(); detections = model([image_tensor])   # [{"boxes", "scores", "labels"}]
"""

__version__ = "0.1.0"

from retinanet.model import build_model, load_weights  # noqa: E402

__all__ = ["__version__", "build_model", "load_weights"]
