"""The ONNX engine against independent references: transformers on the same GGUF, and a
sentence-transformers-style BERT in torch on the same safetensors."""

from __future__ import annotations

import numpy as np
import pytest

from core.build.artifacts import gguf_source, minilm_source
from core.llm.generate import prefill

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = [
    "The quick brown fox jumps over the lazy dog. In 1997, 42 people",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "Héllo wörld 😀 naïve café, 3.14159 and x**2",
]


@pytest.fixture(scope="module")
def hf_llm():
    src = gguf_source()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name,
                                                              dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    return model.eval(), tok


def _hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_matches_transformers(hf_llm, fp32_generator, text):
    _, tok = hf_llm
    assert fp32_generator.chat.encode(text) == tok(text, add_special_tokens=False).input_ids


@pytest.mark.parametrize("text", TEXTS)
def test_fp32_logits_match_transformers(hf_llm, fp32_generator, text):
    """fp32 build = the GGUF's weights dequantized: same logits as transformers, to 1e-3."""
    model, _ = hf_llm
    ids = fp32_generator.chat.encode(text)
    ours, _ = prefill(fp32_generator.runner, ids, all_logits=True)
    ref = _hf_logits(model, ids)
    assert np.abs(ours - ref).max() < 1e-3
    assert (ours.argmax(-1) == ref.argmax(-1)).all()


def test_q4_weights_are_the_gguf_blocks(hf_llm, generator):
    """q4 quantizes activations to int8 inside MatMulNBits (accuracy level 4), so logits move a
    little; the top token must still agree almost everywhere and the distribution stay close."""
    model, _ = hf_llm
    ids = generator.chat.encode(" ".join(TEXTS))
    ours, _ = prefill(generator.runner, ids, all_logits=True)
    ref = _hf_logits(model, ids)
    agree = (ours.argmax(-1) == ref.argmax(-1)).mean()
    p = np.exp(ref - ref.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    log_q = ours - ours.max(-1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(-1, keepdims=True))
    kl = (p * (np.log(p + 1e-30) - log_q)).sum(-1).mean()
    assert agree >= 0.85, agree
    assert kl < 0.05, kl


def test_embeddings_match_sentence_transformers_reference(embedder):
    model_dir = minilm_source()
    bert = transformers.AutoModel.from_pretrained(str(model_dir)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    texts = ["hello world", "A much longer sentence about cats, dogs and the weather in Paris.",
             "Convert 100 °F to Celsius", "x " * 300]
    batch = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = bert(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    ref = (hidden * mask).sum(1) / mask.sum(1)
    ref = torch.nn.functional.normalize(ref, dim=-1).numpy()
    ours = embedder.embed(texts)
    assert ours.shape == (4, 384)
    cos = (ours * ref).sum(-1)
    assert (cos >= 0.9999).all(), cos
