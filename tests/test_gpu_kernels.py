"""Every node of every GPU variant has a CUDA kernel for its op, opset and input types.

A node whose (op, types) the CUDA execution provider has no kernel for still runs, silently, on
the CPU, with copies to and from the GPU around it. Checked two ways:
- against the CUDA section of ONNX Runtime's kernel registry document (tests/data/, which names
  its version), for every node of the graph as built;
- when onnxruntime-gpu is installed (CI's second pass), against that wheel's CUDA provider
  library itself: the kernel classes of the type-restricted ops must be compiled in.
ORT's graph optimizations for the CUDA EP (fusions) need a GPU to run and are not covered here:
bench/gpu_smoke.sh checks the placement of the optimized graph on a GPU.
"""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import onnxruntime
import pytest
from onnx import TensorProto

from core.build.artifacts import build_llm
from core.quant.variants import SPECS, ensure_variant

REGISTRY = Path(__file__).parent / "data" / "onnxruntime_cuda_kernels.md"
GPU_VARIANTS = [name for name, s in SPECS.items() if s.device == "gpu"]


# -- the registry document -----------------------------------------------------------------------
def parse_registry(text: str) -> dict[tuple[str, str], list[dict]]:
    """(domain, op) -> rows: {"versions": (lo, hi), "signatures": [[constraint per input]],
    "types": {constraint: {type, ...}}}; a signature lists each input's constraint name or literal
    type ("tensor(int64)"), in order."""
    kernels: dict[tuple[str, str], list[dict]] = {}
    domain, op, signatures = "", None, []
    for line in text.splitlines():
        if m := re.match(r"\|\*\*Operator Domain:\*\* \*(.+?)\*", line):
            domain = "" if m.group(1) == "ai.onnx" else m.group(1)
            continue
        cells = line.split("|")
        if len(cells) != 6 or not cells[3].strip() or cells[3].startswith("-") or "OpSet" in cells[3]:
            continue
        name, params, versions, types = cells[1:5]
        if name:
            op = name
            signatures = [re.findall(r"\*in\* [^:]+:\*\*(.+?)\*\*", alt)
                          for alt in params.split("or<br><br>")]
        lo, _, hi = versions.strip("[]+").partition(", ")
        bounds = (int(lo), int(hi) if hi else (int(lo) if not versions.endswith("+") else 10**6))
        allowed = {c: set(re.findall(r"tensor\(\w+\)", ts))
                   for c, ts in re.findall(r"\*\*(\w+)\*\* = (.*?)(?:<br/>|$)", types)}
        kernels.setdefault((domain, op), []).append(
            {"versions": bounds, "signatures": signatures, "types": allowed})
    return kernels


def type_name(elem_type: int) -> str:
    return f"tensor({onnx.helper.tensor_dtype_to_np_dtype(elem_type).name})".replace(
        "float64", "double").replace("float32", "float")


# -- the graph's types ---------------------------------------------------------------------------
def value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value, propagated in dependency order (a converted graph lists some
    nodes before their inputs' producers). Most ops here produce their first input's type; the
    exceptions are spelled out, and an op not known here fails loudly."""
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.input)}
    types |= {t.name: t.data_type for t in g.initializer}
    pending = list(g.node)
    while pending:
        waiting = []
        for node in pending:
            if all(not i or i in types for i in node.input):
                types.update(output_types(node, types))
            else:
                waiting.append(node)
        assert len(waiting) < len(pending), f"{len(waiting)} nodes with inputs nothing produces"
        pending = waiting
    return types


SAME_AS_FIRST = {"Add", "Mul", "MatMul", "Gemm", "Sigmoid", "Split", "Reshape", "Identity",
                 "Concat", "Slice", "Gather", "GatherND", "ReduceSum", "MatMulNBits"}


def output_types(node: onnx.NodeProto, types: dict[str, int]) -> dict[str, int]:
    first = types[node.input[0]]
    if node.op_type == "Cast":
        out = [onnx.helper.get_attribute_value(next(a for a in node.attribute if a.name == "to"))]
    elif node.op_type == "Shape":
        out = [TensorProto.INT64]
    elif node.op_type == "ConstantOfShape":  # the value attribute's type (float by default)
        value = [onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "value"]
        out = [value[0].data_type if value else TensorProto.FLOAT]
    elif node.op_type == "SimplifiedLayerNormalization":  # Y has the scale's type (V)
        out = [types[node.input[1]], TensorProto.FLOAT]
    elif node.op_type == "GroupQueryAttention":  # output: query's type; present: past's
        out = [first, types[node.input[3]], types[node.input[3]], first]
    elif node.op_type in SAME_AS_FIRST:
        out = [first] * len(node.output)
    else:
        raise AssertionError(f"{node.op_type}: output types unknown to this test; add a rule")
    return {name: t for name, t in zip(node.output, out, strict=False) if name}


def fits(inputs: list[tuple[int, str]], row: dict, signature: list[str]) -> bool:
    """Each (position, type) input is allowed by that position's constraint (or literal type).
    Inputs past the listed ones share the last one's constraint (variadic: Concat's inputs)."""
    return bool(signature) and all(
        (c := signature[min(i, len(signature) - 1)]) == t or t in row["types"].get(c, ())
        for i, t in inputs)


def missing_kernels(model: onnx.ModelProto, kernels: dict) -> list[str]:
    """One line per node without a CUDA kernel for its op/domain/opset/input types."""
    opsets = {o.domain: o.version for o in model.opset_import}
    types = value_types(model)
    problems = []
    for node in model.graph.node:
        opset = opsets[node.domain or ""]
        inputs = [(i, type_name(types[name])) for i, name in enumerate(node.input) if name]
        rows = [r for r in kernels.get((node.domain, node.op_type), [])
                if r["versions"][0] <= opset <= r["versions"][1]]
        if not any(fits(inputs, r, s) for r in rows for s in r["signatures"]):
            problems.append(f"{node.name} ({node.domain or 'ai.onnx'}:{node.op_type} opset {opset}, "
                            f"inputs {[t for _, t in inputs]})")
    return problems


@pytest.fixture(scope="module")
def kernels() -> dict:
    return parse_registry(REGISTRY.read_text())


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return build_llm(progress=lambda _: None)


def test_the_registry_document_names_its_version_and_parses(kernels):
    assert re.search(r"source-commit: [0-9a-f]{40}", REGISTRY.read_text())
    (gqa,) = kernels[("com.microsoft", "GroupQueryAttention")]
    assert gqa["types"]["T"] == {"tensor(bfloat16)", "tensor(float16)"}  # no float32 kernel
    assert any(r["versions"] == (14, 10**6) for r in kernels[("", "Add")])


@pytest.mark.parametrize("variant", GPU_VARIANTS)
def test_every_node_of_a_gpu_variant_has_a_cuda_kernel(variant, model_dir, kernels):
    model = onnx.load(str(ensure_variant(model_dir, variant, progress=False)), load_external_data=False)
    assert model.graph.node
    assert missing_kernels(model, kernels) == []


def test_the_check_finds_the_cpu_graphs_float32_attention(model_dir, kernels):
    """The CPU graph's float32 GroupQueryAttention has no CUDA kernel: the check must say so."""
    model = onnx.load(str(model_dir / "q4.onnx"), load_external_data=False)
    missing = missing_kernels(model, kernels)
    layers = sum(n.op_type == "GroupQueryAttention" for n in model.graph.node)
    assert len([m for m in missing if "GroupQueryAttention" in m]) == layers > 0


# -- the installed onnxruntime-gpu wheel ---------------------------------------------------------
# Kernel classes (C++ RTTI names in libonnxruntime_providers_cuda.so) of the ops whose CUDA
# registration is type-restricted, for the types the GPU graph feeds them.
FP16 = "NS_9MLFloat16E"
CLASSES = {
    ("com.microsoft", "GroupQueryAttention"): f"7contrib4cuda19GroupQueryAttentionI{FP16}S3_EE",
    ("com.microsoft", "MatMulNBits"): f"7contrib4cuda11MatMulNBitsI{FP16}EE",
    ("", "SimplifiedLayerNormalization"): f"4cuda9LayerNormI{FP16}fS2_Lb1EEE",
}


def cuda_library() -> Path | None:
    lib = Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    return lib if lib.exists() else None


@pytest.mark.skipif(cuda_library() is None, reason="onnxruntime-gpu is not installed")
def test_the_installed_cuda_provider_has_the_float16_kernels_the_gpu_graph_needs(model_dir):
    binary = cuda_library().read_bytes()
    model = onnx.load(str(ensure_variant(model_dir, "q4-fp16", progress=False)), load_external_data=False)
    used = {(n.domain, n.op_type) for n in model.graph.node}
    assert set(CLASSES) <= used
    for op, cls in CLASSES.items():
        assert f"N11onnxruntime{cls}".encode() in binary, f"{op}: no float16 kernel in this wheel"
    # and the lookup can fail: there is no float32 GroupQueryAttention on CUDA
    assert b"N11onnxruntime7contrib4cuda19GroupQueryAttentionIffEE" not in binary
