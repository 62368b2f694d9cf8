"""Using a trained model: loading it from a run folder or checkpoint, scoring it on its test split, predicting,
and exporting it (ONNX checked by onnxruntime)."""
