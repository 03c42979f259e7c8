"""Model build: turn the bundled weights (GGUF, safetensors) into ONNX models, cached on disk."""
