"""ONNX / TensorRT export of the neural stages, runtimes and parity checks."""
