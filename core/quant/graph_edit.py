"""Small, exact rewrites of the built LM graph that the quantizers need before they run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def untie_head(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give the LM head its own transposed weight and a MatMul (in place; returns the model).

    The fp32 build computes the tied head as Gemm(h, table, transB=1) over the embedding table the
    Gather also reads. Every ORT quantizer skips that Gemm (weight-only ones take MatMul only, and
    a shared initializer cannot be rewritten for one consumer), which would leave the largest
    matrix of a 135M model (49152x576, a fifth of the weights) in fp32 and cap the decode speed-up.
    A separate [hidden, vocab] copy makes the head an ordinary MatMul that each technique quantizes;
    the values are identical, so the fp32 logits do not change.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    for i, node in enumerate(graph.node):
        if node.op_type != "Gemm" or node.input[1] not in inits:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transB") != 1 or attrs.get("transA", 0) or len(node.input) > 2:
            continue
        table = numpy_helper.to_array(inits[node.input[1]])
        head = numpy_helper.from_array(table.T.copy(), "lm_head.wT")
        graph.initializer.append(head)
        graph.node.remove(node)
        graph.node.insert(i, helper.make_node("MatMul", [node.input[0], head.name], list(node.output),
                                              name="lm_head"))
        return model
    return model


def set_accuracy_level(model: onnx.ModelProto, level: int, bits: int | None = None) -> onnx.ModelProto:
    """Set MatMulNBits' accuracy_level (0: fp32 activations, 4: int8 activations) in place, on every
    such node or only on those of `bits` bits."""
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "MatMulNBits" or (bits is not None and attrs.get("bits", 4) != bits):
            continue
        for attr in list(node.attribute):
            if attr.name == "accuracy_level":
                node.attribute.remove(attr)
        if level:
            node.attribute.append(helper.make_attribute("accuracy_level", level))
    return model


def int8_kv_cache(model: onnx.ModelProto, k_scale: np.ndarray, v_scale: np.ndarray) -> onnx.ModelProto:
    """Keep the KV cache in int8 (in place): every GroupQueryAttention quantizes the keys and
    values it appends with static per-channel scales ([layers, kv_heads * head_dim] each) and
    reads the cache through ONNX Runtime's fused dequantizing kernels; past/present become int8.
    ONNX Runtime >= 1.32's CPU kernel (kv_cache_bit_width); the GPU wheel has none."""
    graph = model.graph
    for value in list(graph.input) + list(graph.output):
        if value.name.startswith(("past_key.", "past_value.", "present_key.", "present_value.")):
            value.type.tensor_type.elem_type = onnx.TensorProto.INT8
    layer = 0
    for node in graph.node:
        if node.op_type != "GroupQueryAttention":
            continue
        inputs = list(node.input) + [""] * (17 - len(node.input))
        inputs[12], inputs[13] = f"attn{layer}.k_scale", f"attn{layer}.v_scale"  # k_scale, v_scale
        del node.input[:]
        node.input.extend(inputs)
        graph.initializer.extend([numpy_helper.from_array(k_scale[layer].astype(np.float32), inputs[12]),
                                  numpy_helper.from_array(v_scale[layer].astype(np.float32), inputs[13])])
        node.attribute.extend([helper.make_attribute("k_quant_type", "PER_CHANNEL"),
                               helper.make_attribute("v_quant_type", "PER_CHANNEL"),
                               helper.make_attribute("kv_cache_bit_width", 8)])
        layer += 1
    return model


def save(model: onnx.ModelProto, path: Path) -> int:
    """Write atomically (a concurrent reader never sees half a model); returns the file's bytes."""
    tmp = path.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return path.stat().st_size


def head_from_table(model: onnx.ModelProto, node_name: str = "lm_head", table: str = "token_embd"
                    ) -> onnx.ModelProto:
    """Replace the quantized head `node_name` by MatMul(h, Transpose(table)) over the fp32 embedding
    table the Gather already holds (in place), as the fp32 graph computes it.

    The q4 build stores the tied head twice: fp32 for the lookup and Q8_0 for MatMulNBits. Reading
    the fp32 copy instead adds no file bytes (ORT folds the constant Transpose once, at load) and
    makes the head exact, which the 8-bit MatMulNBits cannot be with fp32 activations at speed.
    """
    graph = model.graph
    for i, node in enumerate(graph.node):
        if node.name == node_name and node.op_type == "MatMulNBits":
            transpose = helper.make_node("Transpose", [table], [f"{table}.T"], name=f"{node_name}.T",
                                         perm=[1, 0])
            matmul = helper.make_node("MatMul", [node.input[0], f"{table}.T"], list(node.output),
                                      name=node_name)
            graph.node.remove(node)
            graph.node.insert(i, matmul)
            graph.node.insert(i, transpose)
            break
    else:
        raise ValueError(f"no MatMulNBits node named {node_name!r}")
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


def _drop_and_prune(graph: onnx.GraphProto, drop: set[int], rename: dict[str, str]) -> None:
    """Remove the nodes whose id() is in `drop`, read each renamed value (chains followed) from
    what replaces it, then remove every node that no longer feeds a graph output (what only fed
    the dropped ones: the zero token's chain, the length Adds)."""
    kept = [n for n in graph.node if id(n) not in drop]
    for node in kept:
        for k, name in enumerate(node.input):
            while name in rename:
                name = rename[name]
            node.input[k] = name
    needed = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    changed = True
    while changed:
        changed = False
        for node in list(kept):
            if not any(out in needed for out in node.output):
                kept.remove(node)
                changed = True
        needed = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(kept)


def _kv_float16(graph: onnx.GraphProto) -> None:
    """The KV inputs and outputs (past_*, present_*) typed float16."""
    for value in list(graph.input) + list(graph.output):
        if value.name.startswith(("past_", "present_")):
            value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16


def padded_flavor(model: onnx.ModelProto) -> onnx.ModelProto:
    """The "padded" flavor of a "query_lens" LM graph (core/build/llama.py), in place: the extra
    attention token, its length adjustments and the query_lens input go; each GroupQueryAttention
    takes the projections and the caller's lengths directly. A graph already padded is returned
    as it is. GPU variants need it: onnxruntime-gpu lags the CPU wheel (no query_lens input)."""
    graph = model.graph
    if not any(i.name == "query_lens" for i in graph.input):
        return model
    produced = {out: node for node in graph.node for out in node.output}
    rename: dict[str, str] = {}  # value -> what replaces it
    drop = set()
    for node in graph.node:
        if node.op_type != "GroupQueryAttention":
            continue
        concat = produced[node.input[0]]  # Concat(qkv, zero token)
        rename[node.input[0]] = concat.input[0]
        drop.add(id(concat))
        for k in (5, 6):  # seqlens_k + 1, total_seq_len + 1
            add = produced[node.input[k]]
            rename[node.input[k]] = add.input[0]
            drop.add(id(add))
        del node.input[9:]  # query_lens and the optional inputs before it
    for node in graph.node:  # the Slice that dropped the extra token's output
        if node.op_type == "Slice" and node.input[0] in {n.output[0] for n in graph.node
                                                           if n.op_type == "GroupQueryAttention"}:
            rename[node.output[0]] = node.input[0]
            drop.add(id(node))
    _drop_and_prune(graph, drop, rename)
    inputs = [i for i in graph.input if i.name != "query_lens"]
    del graph.input[:]
    graph.input.extend(inputs)
    return model


def float16_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph in half precision (in place): every float initializer (norm weights, the
    embedding table, rotary caches, MatMulNBits scales and block corrections) and the KV inputs
    and outputs become float16; the logits are cast back to float32 for sampling.

    Unlike ORT's float16 converter, no op stays in float32 with casts around it: the builder's
    graph has none that needs it, and an island would be a node without a float16 CUDA kernel.
    """
    graph = model.graph
    for i, t in enumerate(graph.initializer):
        if t.data_type == onnx.TensorProto.FLOAT:
            graph.initializer[i].CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(t).astype(np.float16), t.name))
    _kv_float16(graph)
    (logits,) = [o for o in graph.output if o.name == "logits"]
    (producer,) = [n for n in graph.node if "logits" in n.output]
    producer.output[list(producer.output).index("logits")] = "logits_fp16"
    graph.node.append(helper.make_node("Cast", ["logits_fp16"], ["logits"], name="logits_fp32",
                                       to=logits.type.tensor_type.elem_type))
    return model


def annotate_float_inputs(model: onnx.ModelProto, op_types: tuple[str, ...]) -> onnx.ModelProto:
    """Declare the activation inputs of `op_types` nodes as float tensors (in place).

    ORT's static quantizer only inserts activation QDQ pairs for tensors whose type shape inference
    found, and ONNX shape inference stops at the first contrib op (GroupQueryAttention, ...). Without
    this, "static int8" silently quantizes the weights only and runs fp32 matmuls behind
    DequantizeLinear (measured: slower than fp32, perplexity unchanged).
    """
    inits = {t.name for t in model.graph.initializer}
    known = {v.name for v in model.graph.value_info} | {v.name for v in model.graph.input}
    for node in model.graph.node:
        if node.op_type in op_types:
            for name in node.input:
                if name and name not in inits and name not in known:
                    model.graph.value_info.append(
                        helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
                    known.add(name)
    return model


FUSED_DOMAIN = "effserve"


def _import_fused_domain(model: onnx.ModelProto) -> None:
    """Declare the project's op domain (once) so ONNX Runtime looks its ops up."""
    if not any(o.domain == FUSED_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(FUSED_DOMAIN, 1))


def fused_attention(model: onnx.ModelProto, half_kv: bool = False) -> onnx.ModelProto:
    """Every GroupQueryAttention of an LM graph (core/build/llama.py) replaced by the project's
    own attention kernel (core/llm/kernels/attention.c, op effserve.Attention), in place. That
    kernel is batch-invariant by construction, so in the "query_lens" flavor the extra zero query
    token and its length adjustments go; in the "padded" flavor (ONNX Runtime 1.31) the op takes
    no query_lens and every row all S tokens, as GroupQueryAttention there. The graph's inputs and
    outputs stay as they were: the engine runs it unchanged, its KV slots written in place the
    same way. half_kv: the KV inputs and outputs in float16 (op effserve.AttentionHalfKV; the
    engine allocates its slots in the graph's KV dtype)."""
    graph = model.graph
    query_lens_flavor = any(i.name == "query_lens" for i in graph.input)
    produced = {out: node for node in graph.node for out in node.output}
    rename: dict[str, str] = {}
    drop = set()
    attention_outputs = set()
    for node in graph.node:
        if node.op_type != "GroupQueryAttention":
            continue
        qkv, seqlens_k, total_seq_len = node.input[0], node.input[5], node.input[6]
        lengths = []
        if query_lens_flavor:
            concat = produced[qkv]  # Concat(qkv, zero token)
            qkv = concat.input[0]
            drop.add(id(concat))
            for k in (5, 6, 16):  # seqlens_k + 1, total_seq_len + 1, query_lens + 1
                add = produced[node.input[k]]
                lengths.append(add.input[0])
                drop.add(id(add))
            seqlens_k, total_seq_len = lengths[:2]
        inputs = [qkv, node.input[3], node.input[4], seqlens_k, total_seq_len, node.input[7],
                  node.input[8], *lengths[2:]]
        fused = helper.make_node("AttentionHalfKV" if half_kv else "Attention", inputs,
                                 list(node.output), name=node.name, domain=FUSED_DOMAIN)
        node.CopyFrom(fused)
        attention_outputs.add(node.output[0])
    for node in graph.node:  # the Slice that dropped the extra token's output
        if node.op_type == "Slice" and node.input[0] in attention_outputs:
            rename[node.output[0]] = node.input[0]
            drop.add(id(node))
    _drop_and_prune(graph, drop, rename)
    if half_kv:
        _kv_float16(graph)
    _import_fused_domain(model)
    return model


def _column_tiles(per_column: np.ndarray) -> np.ndarray:
    """[N, blocks] -> [N/16, blocks, 16]: a tile's 16 columns side by side, block after block."""
    n, blocks = per_column.shape
    return np.ascontiguousarray(per_column.reshape(n // 16, 16, blocks).transpose(0, 2, 1))


def own_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every 8-bit, block-32 MatMulNBits with int8 activations replaced by the project's int8
    matmul (core/llm/kernels/matmul.c, op effserve.MatMulW8), in place: the same weights, scales
    and zero points, packed here in the order its vector loop reads them, and the same arithmetic
    (int8 activations per block of 32). Nodes of other shapes keep MatMulNBits. Every op of the
    project's in the graph gets pool_spin=1: its threads spin between ops."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    replaced: set[str] = set()
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "MatMulNBits" or attrs.get("bits") != 8 or attrs.get("block_size") != 32
                or attrs.get("accuracy_level") != 4 or attrs["N"] % 16 or attrs["K"] % 32
                or len(node.input) not in (3, 4) or any(i not in inits for i in node.input[1:])):
            continue
        n, nb = attrs["N"], attrs["K"] // 32
        weights = numpy_helper.to_array(inits[node.input[1]]).reshape(n // 16, 16, nb, 8, 4)
        scales = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32).reshape(n, nb)
        zero = (numpy_helper.to_array(inits[node.input[3]]).reshape(n, nb) if len(node.input) == 4
                else np.full((n, nb), 128, np.uint8))  # MatMulNBits' default for 8 bits
        packed = {
            "packed": np.ascontiguousarray(weights.transpose(0, 2, 3, 1, 4)).reshape(n // 16, nb, 512),
            "scales": _column_tiles(scales),
            "scaled_zero": _column_tiles(scales * zero.astype(np.float32)),
        }
        names = []
        for suffix, array in packed.items():
            names.append(f"{node.name}.{suffix}")
            graph.initializer.append(numpy_helper.from_array(array, names[-1]))
        replaced.update(node.input[1:])
        node.CopyFrom(helper.make_node("MatMulW8", [node.input[0], *names], list(node.output),
                                       name=node.name, domain=FUSED_DOMAIN))
    for node in graph.node:
        # The kernels' threads spin between these ops (ONNX Runtime runs this graph with one
        # thread: core/llm/session.py), not only within one (core/llm/kernels/pool.h).
        if node.domain == FUSED_DOMAIN:
            node.attribute.append(helper.make_attribute("pool_spin", 1))
    still_used = {i for node in graph.node for i in node.input}
    for init in [t for t in graph.initializer if t.name in replaced and t.name not in still_used]:
        graph.initializer.remove(init)
    _import_fused_domain(model)
    return model
