"""Incremental detokenization for streaming, with stop strings.

Text is released only when it is final: not ending in half a UTF-8 character, and not a
possible beginning of a stop string. Each token decodes only a short window of recent ids (the
prefix/read offsets of vLLM's and TGI's detokenizers), so a token costs the same at the 10th and the
10,000th position; stop strings are searched only where a new one could end.

`repeat_end` (parallel tool calls): the text is a run of segments each ending with it, and a
segment that repeats an earlier one ends the output before it. Each finished segment simply
becomes one more stop string (a small model, free to add calls, tends to repeat its first ones).
"""

from __future__ import annotations

from tokenizers import Tokenizer


class StreamDecoder:
    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...] = (),
                 repeat_end: str | None = None) -> None:
        self.tokenizer, self.stop = tokenizer, tuple(s for s in stop if s)
        self.repeat_end = repeat_end
        self._segment_start = 0  # where the next segment begins (repeat_end only)
        self.ids: list[int] = []
        self.text = ""  # all decoded text so far (up to a stop string, once one is hit)
        self.emitted = 0  # chars of self.text already released
        self.stopped = False
        # ids[prefix:read] decode to text already in self.text; ids[read:] not yet. The window
        # starts one token early because a token's text can depend on the one before it.
        self._prefix = self._read = 0

    def push(self, token_id: int) -> str:
        """Add a token; return the newly final text (may be empty)."""
        self.ids.append(token_id)
        seen = self.tokenizer.decode(self.ids[self._prefix:self._read], skip_special_tokens=True)
        window = self.tokenizer.decode(self.ids[self._prefix:], skip_special_tokens=True)
        # Half a UTF-8 character (wait for the rest), or a token with no text (a special one).
        if window.endswith("\ufffd") or len(window) <= len(seen):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        text = self.text + window[len(seen):]
        # where a new occurrence of each stop could begin: it must end in the new text
        hits = [at for at in (text.find(s, max(0, len(self.text) - len(s) + 1)) for s in self.stop)
                if at != -1]
        if hits:
            self.stopped = True
            self.text = text[:min(hits)]
            return self._release(len(self.text))
        self.text = text
        if self.repeat_end:
            self._stop_at_repeats()
        return self._release(len(text) - self._held_back(text))

    def _stop_at_repeats(self) -> None:
        """Every segment finished since the last look becomes a stop string."""
        while (end := self.text.find(self.repeat_end, self._segment_start)) != -1:
            end += len(self.repeat_end)
            segment = self.text[self._segment_start:end].strip()
            self._segment_start = end
            if segment and segment not in self.stop:
                self.stop += (segment,)

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
