"""Incremental detokenization for streaming, with stop strings.

Text is released only when it is final: not ending in half a UTF-8 character, and not a
possible beginning of a stop string. Each token decodes only a short window of recent ids (the
prefix/read offsets of vLLM's and TGI's detokenizers), so a token costs the same at the 10th and the
10,000th position; stop strings are searched only where a new one could end.
"""

from __future__ import annotations

from tokenizers import Tokenizer


class StreamDecoder:
    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...] = ()) -> None:
        self.tokenizer, self.stop = tokenizer, tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.text = ""  # all decoded text so far (up to a stop string, once one is hit)
        self.emitted = 0  # chars of self.text already released
        self.stopped = False
        # ids[prefix:read] decode to text already in self.text; ids[read:] not yet. The window
        # starts one token early because a token's text can depend on the one before it.
        self._prefix = self._read = 0
        self._longest_stop = max((len(s) for s in self.stop), default=0)

    def push(self, token_id: int) -> str:
        """Add a token; return the newly final text (may be empty)."""
        self.ids.append(token_id)
        seen = self.tokenizer.decode(self.ids[self._prefix:self._read], skip_special_tokens=True)
        window = self.tokenizer.decode(self.ids[self._prefix:], skip_special_tokens=True)
        # Half a UTF-8 character (wait for the rest), or a token with no text (a special one).
        if window.endswith("\ufffd") or len(window) <= len(seen):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        start = max(0, len(self.text) - self._longest_stop + 1)  # where a new stop could begin
        text = self.text + window[len(seen):]
        hits = [at for at in (text.find(s, start) for s in self.stop) if at != -1]
        if hits:
            self.stopped = True
            self.text = text[:min(hits)]
            return self._release(len(self.text))
        self.text = text
        return self._release(len(text) - self._held_back(text))

    def flush(self) -> str:
        """At the end of generation: release whatever is left."""
        return self._release(len(self.text))

    def _held_back(self, text: str) -> int:
        """Length of the longest tail of text that could start a stop string."""
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), longest, -1):
                if s.startswith(text[-n:]):
                    longest = n
                    break
        return longest

    def _release(self, upto: int) -> str:
        upto = max(upto, self.emitted)
        out, self.emitted = self.text[self.emitted:upto], upto
        return out
