"""One request's state inside the engine."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from ..constraint import Constraint
from ..detokenizer import StreamDecoder
from ..sampling import SamplingParams, TokenLogprob, rng_for

_ids = itertools.count()


class Status(Enum):
    WAITING = "waiting"  # no slot yet
    PREFILLING = "prefilling"  # has a slot, prompt partly in the KV cache
    DECODING = "decoding"
    FINISHED = "finished"


@dataclass(eq=False)
class Output:
    """What the engine reports for a sequence after a step."""

    text: str
    n_tokens: int
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "timeout" | "error"
    cached_tokens: int = 0  # prompt tokens served from the prefix cache (set when finished)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # tokens since the last output


@dataclass(eq=False)
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    decoder: StreamDecoder
    on_output: Callable[[Output], None]
    seq_id: int = field(default_factory=lambda: next(_ids))
    output_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    slot: int = -1
    n_cached: int = 0  # tokens of all_ids already in the slot's KV
    pending: int | None = None  # sampled, emitted, not yet fed to the model
    cancelled: bool = False
    prefix_blocks: list = field(default_factory=list)  # prefix-cache blocks this sequence reuses
    reused_tokens: int = 0
    arrival: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    last_token_at: float | None = None
    constraint: Constraint | None = None  # the grammar its output must match
    counts: dict[int, int] = field(default_factory=dict)  # output token -> times (penalties)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # not yet reported
    last_logprob: TokenLogprob | None = None  # of the token just picked
    tenant: str = "default"  # the API key's tenant: fair shares of slots (fairness.py)
    deadline: float | None = None  # perf_counter time after which the request ends ("timeout")
    expected_wait_s: float | None = None  # estimated at admission (admission.py), for metrics

    def __post_init__(self) -> None:
        self.rng = rng_for(self.params.seed)

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED
