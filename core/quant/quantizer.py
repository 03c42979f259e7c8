"""ModelQuantizer: one fp32 ONNX model in (the LM or the embedder), quantized copies out.

Each technique is one method that writes a new .onnx file and returns a QuantResult (sizes before
and after, seconds); nothing is hidden behind defaults the caller cannot see:

  dynamic_int8     weights int8 ahead of time, activations quantized per call (per-tensor or
                   per-channel weights; which op types is the caller's choice)
  static_int8_qdq  QDQ int8 with activation ranges calibrated on real text
  weight_only      MatMulNBits, RTN (ORT's default block quantizer) or HQQ, 4 or 8 bits
  fp16             every float weight and op in half precision (a GPU variant: on CPU ORT runs most
                   ops in fp32 with casts around them, so it is measured and reported, not hidden)

GPTQ / k-quant exist in onnxruntime.quantization only through Intel Neural Compressor, which this
project does not install; `available_algorithms()` says so at run time instead of failing late.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType

from .graph_edit import annotate_float_inputs, save, untie_head

FLOAT_DEFAULT = {"DefaultTensorType": onnx.TensorProto.FLOAT}  # contrib ops defeat shape inference


@dataclass
class QuantResult:
    technique: str
    path: Path
    bytes_before: int
    bytes_after: int
    seconds: float

    def __str__(self) -> str:
        return (f"{self.technique}: {self.bytes_before / 1e6:.0f} MB -> {self.bytes_after / 1e6:.0f} MB "
                f"({self.bytes_after / self.bytes_before:.2f}x) in {self.seconds:.1f} s -> {self.path.name}")


def available_algorithms() -> dict[str, str]:
    """Weight-only algorithms of this onnxruntime and whether they can run here (reason if not)."""
    has_inc = importlib.util.find_spec("neural_compressor") is not None
    has_torch = importlib.util.find_spec("torch") is not None
    missing_inc = "needs neural-compressor (not a project dependency)"
    return {"rtn": "ok", "hqq": "ok" if has_torch else "needs torch",
            "gptq": "ok" if has_inc else missing_inc, "k_quant": "ok" if has_inc else missing_inc}


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    """ORT's quantizers log a warning per node; keep the progress bar readable."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class ModelQuantizer:
    """Quantize `source` (an fp32 .onnx). kind="lm" unties the LM head first (see graph_edit)."""

    def __init__(self, source: Path, kind: str = "lm", show_progress: bool = True) -> None:
        if kind not in ("lm", "embedder"):
            raise ValueError(f"kind must be 'lm' or 'embedder', got {kind!r}")
        self.source, self.kind, self.show_progress = Path(source), kind, show_progress
        self.bytes_before = self.source.stat().st_size

    def _load(self) -> onnx.ModelProto:
        model = onnx.load(str(self.source))
        return untie_head(model) if self.kind == "lm" else model

    def _done(self, technique: str, out: Path, start: float) -> QuantResult:
        result = QuantResult(technique, out, self.bytes_before, out.stat().st_size,
                             time.perf_counter() - start)
        if self.show_progress:
            print(result)
        return result

    def dynamic_int8(self, out: Path, per_channel: bool, op_types: tuple[str, ...] = ("MatMul",)
                     ) -> QuantResult:
        from onnxruntime.quantization import quantize_dynamic

        start = time.perf_counter()
        with _quiet_ort():
            quantize_dynamic(self._load(), out, op_types_to_quantize=list(op_types),
                             per_channel=per_channel, weight_type=QuantType.QInt8,
                             extra_options=dict(FLOAT_DEFAULT))
        kind = "per-channel" if per_channel else "per-tensor"
        return self._done(f"int8 dynamic {kind} ({','.join(op_types)})", out, start)

    def static_int8_qdq(self, out: Path, reader: CalibrationDataReader, per_channel: bool = True,
                        op_types: tuple[str, ...] = ("MatMul",)) -> QuantResult:
        from onnxruntime.quantization import CalibrationMethod, quantize_static

        start = time.perf_counter()
        # The calibrator writes an augmented copy of the model; keep it off the models dir.
        with tempfile.TemporaryDirectory() as tmp, _quiet_ort():
            src = Path(tmp) / "prepared.onnx"
            save(annotate_float_inputs(self._load(), op_types), src)
            quantize_static(src, out, reader, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(op_types), per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax,
                            extra_options=dict(FLOAT_DEFAULT) | {"ActivationSymmetric": False})
        return self._done(f"int8 static QDQ ({','.join(op_types)}, MinMax calibration)", out, start)

    def weight_only(self, out: Path, bits: int = 4, block_size: int = 32, algorithm: str = "rtn",
                    symmetric: bool = False, accuracy_level: int = 4) -> QuantResult:
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            HQQWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )

        status = available_algorithms().get(algorithm, "unknown algorithm")
        if status != "ok":
            raise RuntimeError(f"weight-only algorithm {algorithm!r} unavailable: {status}")
        start = time.perf_counter()
        model = self._load()
        if algorithm == "hqq":
            config = HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits,
                                              op_types_to_quantize=("MatMul",))
        else:
            config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric,
                                                  accuracy_level=accuracy_level, bits=bits,
                                                  op_types_to_quantize=("MatMul",))
        quantizer = MatMulNBitsQuantizer(model, algo_config=config)
        bar = self._count_nodes(quantizer, model, f"{algorithm} {bits}-bit b{block_size}")
        with _quiet_ort():
            quantizer.process()
        if bar is not None:
            bar.close()
        if algorithm == "hqq":  # HQQ's config has no accuracy level; set it like the others
            from .graph_edit import set_accuracy_level

            set_accuracy_level(quantizer.model.model, accuracy_level)
        save(quantizer.model.model, out)
        sym = "sym" if symmetric else "asym"
        technique = (f"int{bits} weight-only {algorithm.upper()} block {block_size}"
                     f"{'' if algorithm == 'hqq' else ' ' + sym}, accuracy_level {accuracy_level}")
        return self._done(technique, out, start)

    def _count_nodes(self, quantizer, model: onnx.ModelProto, desc: str):
        """Wrap the per-node quantize call in a progress bar (ORT's quantizer has none)."""
        if not self.show_progress:
            return None
        from tqdm import tqdm

        inits = {t.name for t in model.graph.initializer}
        total = sum(n.op_type == "MatMul" and n.input[1] in inits for n in model.graph.node)
        bar = tqdm(total=total, desc=desc, unit="matmul", leave=False)
        inner = quantizer.node_quantizer.quantize

        def counted(node, graph_stack):
            result = inner(node, graph_stack)
            bar.update(node.op_type == "MatMul")
            return result

        quantizer.node_quantizer.quantize = counted
        return bar

    def fp16(self, out: Path) -> QuantResult:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        start = time.perf_counter()
        # keep_io_types: the runner feeds fp32 KV tensors and reads fp32 logits, as for every variant.
        # The converter needs shape inference to put casts around the ops it keeps in fp32 (the
        # embedder's pooling tail); the LM's contrib ops defeat shape inference, and it needs none.
        with _quiet_ort():
            model = convert_float_to_float16(self._load(), keep_io_types=True,
                                             disable_shape_infer=self.kind == "lm")
        save(model, out)
        return self._done("fp16 (weights and ops; fp32 I/O)", out, start)
