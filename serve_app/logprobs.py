"""Token log-probabilities in OpenAI's two shapes: chat's `{"content": [...]}` entries with token
text, UTF-8 bytes and top alternatives, and the legacy completions' parallel lists.

The engine reports token ids (core.llm.sampling.TokenLogprob as a dict); the text and bytes of a
token come from the byte-level BPE vocabulary, so a token that is half of a UTF-8 character still
reports its exact bytes.
"""

from __future__ import annotations

from tokenizers import Tokenizer


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the character a byte-level BPE uses for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class TokenTexts:
    """id -> (text, bytes) for every token of the vocabulary."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        decoder = _byte_decoder()
        special = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
        self.bytes: list[bytes] = []
        for token_id in range(tokenizer.get_vocab_size()):
            piece = tokenizer.id_to_token(token_id) or ""
            if piece in special or not all(c in decoder for c in piece):
                self.bytes.append(piece.encode())
            else:
                self.bytes.append(bytes(decoder[c] for c in piece))
        self.texts = [b.decode("utf-8", errors="replace") for b in self.bytes]

    def entry(self, token: int, logprob: float) -> dict:
        return {"token": self.texts[token], "logprob": logprob, "bytes": list(self.bytes[token])}

    def chat(self, logprobs: list[dict]) -> dict:
        """Chat's logprobs object for some generated tokens."""
        return {"content": [{**self.entry(lp["token"], lp["logprob"]),
                             "top_logprobs": [self.entry(t, v) for t, v in lp["top"]]}
                            for lp in logprobs], "refusal": None}


class CompletionLogprobs:
    """The legacy completions shape, one per choice: text offsets run on across stream chunks."""

    def __init__(self, texts: TokenTexts) -> None:
        self.texts, self.offset = texts, 0

    def render(self, logprobs: list[dict]) -> dict:
        out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for lp in logprobs:
            text = self.texts.texts[lp["token"]]
            out["tokens"].append(text)
            out["token_logprobs"].append(lp["logprob"])
            out["top_logprobs"].append({self.texts.texts[t]: v for t, v in lp["top"]})
            out["text_offset"].append(self.offset)
            self.offset += len(text)
        return out
