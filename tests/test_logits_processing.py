"""Per-row logits processing: pure numpy (penalties, bias, logprobs) and in the real engine, for
every row of a continuous batch (logprobs, logit_bias, penalties, grammar-constrained JSON)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.llm.constraint import GrammarError, json_schema_grammar
from core.llm.engine import EngineConfig, LLMEngine
from core.llm.sampling import SamplingParams, logprobs_of, process_logits

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


def test_penalties_follow_openai_definition():
    logits = np.zeros(6, np.float32)
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25, logit_bias={"4": -100, 5: 2})
    out = process_logits(logits, params, {1: 1, 2: 3})
    assert out.tolist() == [0, -0.75, -1.25, 0, -100, 2]
    assert logits.tolist() == [0] * 6  # the model's logits are left alone


def test_mask_and_logprobs_are_a_log_softmax_over_allowed_tokens():
    logits = np.array([1.0, 2.0, 3.0, 0.5], np.float32)
    masked = process_logits(logits, SamplingParams(), {}, np.array([True, True, False, True]))
    lp = logprobs_of(masked, SamplingParams(temperature=0.5), 1, 5)
    z = np.array([1.0, 2.0, 0.5]) / 0.5
    expected = z - np.log(np.exp(z).sum())
    assert lp.token == 1 and lp.logprob == pytest.approx(expected[1])
    assert [t for t, _ in lp.top] == [1, 0, 3]  # the masked token is no alternative
    assert np.exp([v for _, v in lp.top]).sum() == pytest.approx(1.0)


def test_bad_schema_is_a_grammar_error():
    with pytest.raises(GrammarError):
        json_schema_grammar({"type": "nonsense"})


def chat_ids(generator, question: str) -> list[int]:
    return generator.chat.encode(generator.chat.chat_prompt([{"role": "user", "content": question}]))


@pytest.fixture(scope="module")
def engine(generator):
    return LLMEngine(generator.runner, generator.chat, EngineConfig(max_seq_len=1024))


def run(engine, requests):
    outs = [[] for _ in requests]
    seqs = [engine.add(ids, p, outs[i].append) for i, (ids, p) in enumerate(requests)]
    while not all(s.finished for s in seqs):
        engine.step()
    return [("".join(o.text for o in out), out[-1].finish_reason, [lp for o in out for lp in o.logprobs],
             seq) for out, seq in zip(outs, seqs, strict=True)]


def test_greedy_logprobs_rank_the_chosen_token_first_in_a_batch(generator, engine):
    ids = chat_ids(generator, "Name three colours.")
    plain = SamplingParams(max_tokens=12, temperature=0)
    with_lp = SamplingParams(max_tokens=12, temperature=0, logprobs=3)
    (text0, _, lps0, _), (text1, _, lps1, seq1) = run(engine, [(ids, plain), (ids, with_lp)])
    assert text0 == text1 and lps0 == []  # asking for logprobs does not change the answer
    assert [lp.token for lp in lps1] == seq1.output_ids
    for lp in lps1:
        assert len(lp.top) == 3 and lp.top[0][0] == lp.token and lp.top[0][1] == lp.logprob
        assert lp.logprob <= 0 and lp.top[0][1] >= lp.top[1][1] >= lp.top[2][1]


def test_logit_bias_and_penalties_change_only_their_row(generator, engine):
    ids = chat_ids(generator, "Say the word hello five times.")
    plain = SamplingParams(max_tokens=10, temperature=0)
    first = run(engine, [(ids, plain)])[0][3].output_ids[0]
    banned = SamplingParams(max_tokens=10, temperature=0, logit_bias={first: -100})
    penalised = SamplingParams(max_tokens=10, temperature=0, frequency_penalty=2.0, presence_penalty=2.0)
    a, b, c = run(engine, [(ids, plain), (ids, banned), (ids, penalised)])
    assert a[3].output_ids[0] == first and first not in b[3].output_ids
    assert len(set(c[3].output_ids)) == len(c[3].output_ids)  # no token repeats under a heavy penalty
    assert run(engine, [(ids, plain)])[0][0] == a[0]


def test_constrained_rows_give_valid_json_beside_free_rows(generator, engine):
    jsonschema = pytest.importorskip("jsonschema")
    ids = chat_ids(generator, "Describe a person as JSON with a name and an age.")
    free = SamplingParams(max_tokens=24, temperature=0)
    grammar = json_schema_grammar(PERSON)
    constrained = [SamplingParams(max_tokens=64, temperature=t, seed=s, grammar=grammar, logprobs=0)
                   for t, s in [(0, None), (1.0, 1), (1.0, 2)]]
    anything = SamplingParams(max_tokens=64, temperature=0, grammar=json_schema_grammar(None))
    results = run(engine, [(ids, free), *[(ids, p) for p in constrained], (ids, anything)])
    assert not results[0][0].lstrip().startswith("{")  # the free row is not constrained
    for text, finish, lps, _ in results[1:4]:
        assert finish == "stop", text
        jsonschema.validate(json.loads(text), PERSON)
        assert all(np.isfinite(lp.logprob) for lp in lps)
    assert isinstance(json.loads(results[4][0]), dict) and results[4][1] == "stop"


def test_speculation_does_not_bypass_the_grammar(generator, engine):
    """Prompt lookup would propose the prompt's own (non-JSON) text: constrained rows decode
    one token at a time and give exactly what the plain engine gives."""
    spec = LLMEngine(generator.runner, generator.chat,
                     EngineConfig(max_seq_len=1024, speculative="ngram", prefix_cache_bytes=0))
    ids = chat_ids(generator, "Repeat after me: name Ada, age 36. Now as JSON with a name and an age.")
    params = SamplingParams(max_tokens=48, temperature=0, grammar=json_schema_grammar(PERSON))
    text, finish, _, _ = run(spec, [(ids, params)])[0]
    assert (text, finish) == run(engine, [(ids, params)])[0][:2]
    assert finish == "stop" and set(json.loads(text)) == {"name", "age"}
    assert spec.spec.stats.steps == 0  # no speculative step ran
