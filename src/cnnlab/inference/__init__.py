"""Using a trained model: loading it from a run folder or checkpoint for prediction, and exporting it
(ONNX checked by onnxruntime)."""
