"""retinanet: train, evaluate, run and export RetinaNet object detectors.

    detector = retinanet.Detector.load("runs/train/best.pt")        # or a torchvision .pth file
    results = detector.predict(["a.jpg", "b.jpg"], score_thresh=0.3)  # paths, PIL, numpy, tensors
    results[0].boxes, results[0].scores, results[0].names             # original pixels, xyxy

The model alone: ``build_model`` + ``load_weights`` (inputs: ``[3, H, W]`` tensors, outputs
``[{"boxes", "scores", "labels"}]`` in the pixel frame of the images given).
"""

__version__ = "0.1.0"

from retinanet.engine.infer.detector import Detections, Detector  # noqa: E402
from retinanet.engine.runtime.checkpoint import load_weights  # noqa: E402
from retinanet.model import build_model  # noqa: E402

__all__ = ["Detections", "Detector", "__version__", "build_model", "load_weights"]
