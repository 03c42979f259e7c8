"""Sentence embeddings with ONNX Runtime: a batch of texts -> unit vectors. Free of Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .build.artifacts import EMBEDDER_ID, build_embedder
from .cache.align import TokenVectors
from .llm.session import make_session

MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on up to 256 word pieces


class Embedder:
    model_id = EMBEDDER_ID

    def __init__(self, model_dir: str | Path, threads: int | None = None, spinning: bool = False,
                 device: str = "auto") -> None:
        model_dir = Path(model_dir)
        self.session = make_session(str(model_dir / "model.onnx"), threads, spinning, device)
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # The shipped tokenizer.json pads and truncates to a fixed 128: pad to the longest instead.
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.no_padding()
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.dim = int(self.session.get_outputs()[0].shape[-1])

    @classmethod
    def load(cls, token_outputs: bool = False, **kwargs) -> Embedder:
        """token_outputs: the graph that also returns token vectors (for embed_tokens)."""
        return cls(build_embedder(progress=lambda _: None, token_outputs=token_outputs), **kwargs)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        batch = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in batch], dtype=np.int64)
        mask = np.array([e.attention_mask for e in batch], dtype=np.int64)
        return ids, mask

    def embed(self, texts: list[str]) -> np.ndarray:
        """[N, dim] float32, L2-normalised."""
        return self.embed_counted(texts)[0]

    def embed_tokens(self, texts: list[str]) -> list[TokenVectors]:
        """Each text's unit token vectors and word pieces (needs a load(token_outputs=True)
        graph). One batch: the semantic cache calls it with a prompt and a few candidates."""
        return self.embed_with_tokens(texts)[1]

    def embed_with_tokens(self, texts: list[str]) -> tuple[np.ndarray, list[TokenVectors]]:
        """Sentence vectors and token vectors from one run (one batch)."""
        if len(self.session.get_outputs()) < 2:
            raise ValueError("this embedder graph has no token outputs: load(token_outputs=True)")
        batch = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in batch], dtype=np.int64)
        mask = np.array([e.attention_mask for e in batch], dtype=np.int64)
        vectors, tokens = self.session.run(["embeddings", "token_embeddings"],
                                           {"input_ids": ids, "attention_mask": mask})
        counts = mask.sum(axis=1).tolist()
        return vectors, [TokenVectors(tokens[i, :n], batch[i].tokens[:n]) for i, n in enumerate(counts)]

    def embed_counted(self, texts: list[str], max_batch: int = 64) -> tuple[np.ndarray, list[int]]:
        """Vectors and the number of tokens of each text (after truncation).

        Texts are run in batches of similar length, so short texts do not pay for padding.
        """
        out = np.zeros((len(texts), self.dim), np.float32)
        counts = [0] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), max_batch):
            rows = order[start:start + max_batch]
            ids, mask = self.encode([texts[i] for i in rows])
            out[rows] = self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
            for row, n in zip(rows, mask.sum(axis=1).tolist(), strict=True):
                counts[row] = n
        return out, counts
