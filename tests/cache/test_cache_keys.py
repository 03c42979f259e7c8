"""Exact keys, partitions and cacheability: pure logic."""

from __future__ import annotations

import re

import pytest

from core.cache import keys

CHAT = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0}


def chat(content: str, **params) -> dict:
    return {"messages": [{"role": "user", "content": content}], "temperature": 0, **params}


def key(payload: dict, model: str = "m", endpoint: keys.EndpointKind = "chat", tenant: str = "t") -> str:
    return keys.exact_key(model, endpoint, payload, tenant)


def test_key_is_sha256_hex_and_stable():
    k = key(CHAT)
    assert re.fullmatch(r"[0-9a-f]{64}", k)
    assert k == key(
        {"temperature": 0, "messages": [{"content": CHAT["messages"][0]["content"], "role": "user"}]}
    )


def test_whitespace_is_normalised():
    assert key(chat("  What is   the capital\n\tof France?  ")) == key(CHAT)


def test_case_and_words_are_not_normalised():
    assert key(chat("what is the capital of france?")) != key(CHAT)
    assert key(chat("What is the capital of Germany?")) != key(CHAT)


def test_code_fences_keep_their_whitespace():
    a = "Fix this:\n```python\nif x:\n    return 1\n```"
    b = "Fix this:\n```python\nif x:\n return 1\n```"
    assert key(chat(a)) != key(chat(b))
    assert key(chat("Fix   this:\n" + a[10:])) == key(chat(a))


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.5}, {"top_p": 0.9}, {"max_tokens": 10}, {"stop": ["\n"]}, {"seed": 1},
        {"n": 2}, {"presence_penalty": 0.1}, {"response_format": {"type": "json_object"}},
        {"some_future_param": True}, {"frequency_penalty": 0.1}, {"logit_bias": {"42": -100}},
        {"logprobs": True}, {"logprobs": True, "top_logprobs": 3}, {"tool_choice": "required"},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
    ],
)  # fmt: skip
def test_every_answer_changing_param_changes_the_key(change):
    assert key({**CHAT, **change}) != key(CHAT)
    # ... and the semantic partition: a neighbour must have been answered under the same settings
    assert keys.params_fingerprint("chat", {**CHAT, **change}) != keys.params_fingerprint("chat", CHAT)


def test_schema_and_tool_details_change_the_key():
    def schema(t: str) -> dict:
        return {"response_format": {"type": "json_schema",
                                    "json_schema": {"name": "x", "schema": {"type": t}}}}

    def tool(name: str) -> dict:
        return {"tools": [{"type": "function", "function": {"name": name}}],
                "tool_choice": {"type": "function", "function": {"name": name}}}

    assert key({**CHAT, **schema("object")}) != key({**CHAT, **schema("array")})
    assert key({**CHAT, **tool("f")}) != key({**CHAT, **tool("g")})
    assert key({**CHAT, "logit_bias": {"1": 5}}) != key({**CHAT, "logit_bias": {"1": 6}})


def test_model_tenant_and_endpoint_change_the_key():
    base = key(CHAT)
    assert key(CHAT, model="other") != base
    assert key(CHAT, tenant="other") != base
    prompt = {"prompt": "What is the capital of France?", "temperature": 0}
    assert key(prompt, endpoint="completions") != key(prompt, endpoint="embeddings")


def test_transport_fields_do_not_change_the_key():
    assert key({**CHAT, "stream": True, "stream_options": {"include_usage": True}, "user": "u1"}) == key(CHAT)


def test_equivalent_values_hash_alike():
    assert key({**CHAT, "temperature": 0.0}) == key({**CHAT, "temperature": 0})
    assert key({**CHAT, "stop": "x"}) == key({**CHAT, "stop": ["x"]})
    assert key({**CHAT, "stop": ["a", "b"]}) == key({**CHAT, "stop": ["b", "a"]})
    assert key({**CHAT, "seed": None}) == key(CHAT)


def test_system_prompt_changes_key_and_partition():
    sys_a = {"messages": [{"role": "system", "content": "Be terse."}, *CHAT["messages"]], "temperature": 0}
    sys_b = {"messages": [{"role": "system", "content": "Be verbose."}, *CHAT["messages"]], "temperature": 0}
    ka, kb = keys.request_keys("m", "chat", sys_a, "t"), keys.request_keys("m", "chat", sys_b, "t")
    assert ka.exact != kb.exact
    assert ka.partition != kb.partition
    assert ka.semantic_text == kb.semantic_text == "What is the capital of France?"


def test_partition_ignores_the_prompt_but_not_params():
    a = keys.request_keys("m", "chat", chat("What is the capital of France?"), "t")
    b = keys.request_keys("m", "chat", chat("Capital of France?"), "t")
    assert a.partition == b.partition and a.exact != b.exact
    c = keys.request_keys("m", "chat", chat("Capital of France?", max_tokens=5), "t")
    assert c.partition != a.partition


def test_semantic_text_only_for_single_turn_text():
    assert keys.semantic_text("chat", chat("  Hi   there ")) == "Hi there"
    multi = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                          {"role": "user", "content": "c"}]}  # fmt: skip
    assert keys.semantic_text("chat", multi) is None
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}
    assert keys.semantic_text("chat", parts) == "Hi"
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}
    assert keys.semantic_text("chat", image) is None
    assert keys.semantic_text("completions", {"prompt": "Once upon"}) == "Once upon"
    assert keys.semantic_text("completions", {"prompt": ["a", "b"]}) is None
    assert keys.semantic_text("embeddings", {"input": "text"}) is None


NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{1,61}[a-zA-Z0-9]$")


@pytest.mark.parametrize(
    ("model", "tenant"),
    [
        ("m", "t"), ("", ""), ("Qwen/Qwen2.5-0.5B-Instruct", "acme corp"), ("x" * 300, "y" * 300),
        ("модель", "租户"), ("..", "--"), ("a.b", "c.d"),
    ],
)  # fmt: skip
def test_partition_name_is_a_valid_collection_name(model, tenant):
    name = keys.partition_name(model, "fp", tenant)
    assert NAME_RE.match(name), name
    assert 3 <= len(name) <= 61 and "." not in name  # room for the store's ".x" suffix


def test_partition_name_separates_model_tenant_params():
    names = {
        keys.partition_name("a/b", "fp", "t"),
        keys.partition_name("a_b", "fp", "t"),  # same slug, different model
        keys.partition_name("a/b", "fp", "u"),
        keys.partition_name("a/b", "fp2", "t"),
    }
    assert len(names) == 4


@pytest.mark.parametrize(
    ("params", "opt_in", "endpoint", "expected"),
    [
        ({"temperature": 0}, False, "chat", True),
        ({"temperature": 0.0}, False, "completions", True),
        ({"temperature": 0.7, "seed": 42}, False, "chat", True),
        ({"seed": 0}, False, "chat", True),
        ({}, False, "chat", False),  # OpenAI's default temperature is 1
        ({"temperature": 0.7}, False, "chat", False),
        ({"temperature": 0.7}, True, "chat", True),
        ({}, False, "embeddings", True),
    ],
)
def test_is_cacheable(params, opt_in, endpoint, expected):
    assert keys.is_cacheable(params, opt_in, endpoint) is expected
