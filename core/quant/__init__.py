"""Quantization: the ModelQuantizer, named LM variants built on demand, quality gates vs fp32."""
