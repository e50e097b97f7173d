"""Export wing: the verified ONNX gate, int8 quantization, the onnxruntime predictor and the logged
MLflow model. Imports tracking, training and the floor (named so it does not shadow trainforge.export)."""
