"""LLM inference core: ONNX Runtime sessions, KV cache, decoding. Free of Ray."""
