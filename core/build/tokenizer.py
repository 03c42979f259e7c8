"""Rebuild the Hugging Face tokenizer of a GGUF (gpt2-style byte-level BPE) from its metadata.

transformers can do this too, but only with torch installed; the `tokenizers` library alone
keeps the build step light. The pre-tokenizer follows llama.cpp's "smollm" pre-type: digits
split one by one, then GPT-2 byte-level splitting.
"""

from __future__ import annotations

import gguf
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

CONTROL = 3  # gguf token_type for special/control tokens
SUPPORTED_PRE = {"smollm"}


def tokenizer_from_gguf(path: str) -> Tokenizer:
    reader = gguf.GGUFReader(path)
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    if field("tokenizer.ggml.model") != "gpt2" or field("tokenizer.ggml.pre") not in SUPPORTED_PRE:
        raise NotImplementedError(f"{path}: tokenizer {field('tokenizer.ggml.model')}/"
                                  f"{field('tokenizer.ggml.pre')} is not supported")
    tokens: list[str] = field("tokenizer.ggml.tokens")
    types: list[int] = field("tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges")]
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                     fuse_unk=False, byte_fallback=False)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, types, strict=True) if kind == CONTROL])
    return tok
