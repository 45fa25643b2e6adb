"""Export: the ONNX graph of a checkpoint (``onnx_export``) and its check against PyTorch on
sample images (``onnx_verify``)."""
