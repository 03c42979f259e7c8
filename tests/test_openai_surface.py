"""Structured outputs, tool calls, logprobs, n, penalties and logit_bias through the real app and
the official OpenAI client, streamed and not (one shared Serve app; small max_tokens)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import pytest
from langchain_openai import ChatOpenAI
from openai import BadRequestError, OpenAI
from pydantic import BaseModel

pytestmark = pytest.mark.integration
CHAT = "smollm2-135m-instruct"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                   "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The local time in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                   "required": ["city"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
PARIS = "Describe Paris as JSON with keys name, country, population."


class City(BaseModel):
    name: str
    country: str
    population: int


@pytest.fixture(scope="module")
def client(serve_url) -> OpenAI:
    return OpenAI(base_url=f"{serve_url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_parse_returns_a_pydantic_object(client):
    r = client.beta.chat.completions.parse(
        model=CHAT, temperature=0, max_tokens=60, response_format=City,
        messages=[{"role": "user", "content": PARIS}])
    choice = r.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, City) and choice.message.parsed.name


def test_json_object_streamed_equals_plain_and_parses(client):
    kwargs = dict(model=CHAT, temperature=0, max_tokens=48, response_format={"type": "json_object"},
                  messages=[{"role": "user", "content": "Give me a JSON object about a cat."}])
    plain = client.chat.completions.create(**kwargs).choices[0]
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == plain.message.content
    if plain.finish_reason == "stop":
        assert isinstance(json.loads(streamed), dict)


def test_logprobs_agree_with_the_greedy_choice(client):
    r = client.chat.completions.create(model=CHAT, temperature=0, max_tokens=8, logprobs=True,
                                       top_logprobs=3, messages=[{"role": "user", "content": "Hi!"}])
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token
        assert t.top_logprobs[0].logprob == t.logprob <= 0
        assert bytes(t.bytes).decode(errors="replace") == t.token
    chunks = list(client.chat.completions.create(
        model=CHAT, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3, stream=True,
        messages=[{"role": "user", "content": "Hi!"}]))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs
                for t in c.choices[0].logprobs.content]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]


def test_completions_logprobs_and_a_list_of_prompts(client):
    r = client.completions.create(model=CHAT, prompt=["The sky is", "Two plus two is"], max_tokens=5,
                                  temperature=0, logprobs=2)
    assert [c.index for c in r.choices] == [0, 1]
    for c in r.choices:
        lp = c.logprobs
        assert "".join(lp.tokens) == c.text and len(lp.token_logprobs) == len(lp.tokens)
        assert lp.text_offset[0] == 0 and all(len(top) == 2 for top in lp.top_logprobs)
        assert all(max(top.values()) == v for top, v in zip(lp.top_logprobs, lp.token_logprobs, strict=True))


def test_n_choices_are_reproducible_with_a_seed(client):
    kwargs = dict(model=CHAT, temperature=1.0, seed=7, n=3, max_tokens=12,
                  messages=[{"role": "user", "content": "Tell me a story."}])
    a = [c.message.content for c in client.chat.completions.create(**kwargs).choices]
    b = [c.message.content for c in client.chat.completions.create(**kwargs).choices]
    assert a == b and len(set(a)) > 1
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    streamed = ["".join(c.choices[0].delta.content or "" for c in chunks
                        if c.choices and c.choices[0].index == i) for i in range(3)]
    assert streamed == a


def test_n_choices_share_the_prompt_prefill(client):
    system = "You are a terse assistant. Rule 7149: answer in exactly three words. " * 4  # unseen
    r = client.chat.completions.create(model=CHAT, temperature=1.0, n=4, max_tokens=3,
                                       messages=[{"role": "system", "content": system}, *ASK])
    assert len(r.choices) == 4
    # choices 1-3 reuse the prompt choice 0 prefilled (the cache holds whole 16-token blocks)
    used = r.usage
    assert used.prompt_tokens > 48 and used.prompt_tokens_details.cached_tokens >= used.prompt_tokens - 16


def test_logit_bias_and_penalties_are_applied(client):
    kwargs = dict(model=CHAT, temperature=0, max_tokens=6, logprobs=True,
                  messages=[{"role": "user", "content": "Say hello."}])
    first = client.chat.completions.create(**kwargs).choices[0].logprobs.content[0]
    banned = client.chat.completions.create(
        **kwargs, logit_bias={str(_id_of(client, first)): -100}).choices[0].logprobs.content[0]
    assert banned.token != first.token
    penalised = client.chat.completions.create(**kwargs, presence_penalty=2.0, frequency_penalty=2.0)
    assert penalised.choices[0].message.content


def _id_of(client, entry) -> int:
    from tokenizers import Tokenizer

    from core.build.artifacts import build_llm

    tokenizer = Tokenizer.from_file(str(build_llm(progress=lambda _: None) / "tokenizer.json"))
    ids = tokenizer.encode(bytes(entry.bytes).decode(), add_special_tokens=False).ids
    assert len(ids) == 1
    return ids[0]


def test_tool_call_round_trip(client):
    # parallel calls (the default) cost the tokens of one repeated call at most: 80, not 40
    r = client.chat.completions.create(model=CHAT, temperature=0, max_tokens=80, messages=ASK,
                                       tools=[WEATHER], tool_choice="required")
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    history = [*ASK, choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21, "sky": "sunny"}'}]
    answer = client.chat.completions.create(model=CHAT, temperature=0, max_tokens=24, messages=history,
                                            tools=[WEATHER], tool_choice="none")
    assert answer.choices[0].message.content and answer.choices[0].message.tool_calls is None
    chunks = list(client.chat.completions.create(
        model=CHAT, temperature=0, max_tokens=80, messages=ASK, tools=[WEATHER], stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    calls = [tc for c in chunks if c.choices and c.choices[0].delta.tool_calls
             for tc in c.choices[0].delta.tool_calls]
    assert calls[0].function.name == "get_weather" and calls[0].id  # then the arguments in pieces
    arguments = "".join(c.function.arguments or "" for c in calls)
    assert json.loads(arguments) == json.loads(call.function.arguments)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_parallel_tool_calls_each_valid_streamed_with_their_index(client):
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
    kwargs = dict(model=CHAT, temperature=0, max_tokens=120, tools=[WEATHER, TIME], tool_choice="required",
                  messages=[{"role": "user", "content": "What is the weather in Paris and in London?"}],
                  extra_headers={"Cache-Control": "no-store"})  # the stream is generated, not replayed
    choice = client.chat.completions.create(**kwargs).choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls]
    assert len(calls) >= 2 and len({json.dumps(c) for c in calls}) == len(calls)  # several, none repeated
    for name, arguments in calls:
        jsonschema.validate(arguments, schemas[name])
    assert len({c.id for c in choice.message.tool_calls}) == len(calls)
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    pieces = [tc for c in chunks if c.choices and c.choices[0].delta.tool_calls
              for tc in c.choices[0].delta.tool_calls]
    streamed = [(next(p.function.name for p in pieces if p.index == i and p.id),
                 json.loads("".join(p.function.arguments or "" for p in pieces if p.index == i)))
                for i in sorted({p.index for p in pieces})]
    assert streamed == calls
    one = client.chat.completions.create(**kwargs, parallel_tool_calls=False).choices[0]
    assert one.finish_reason == "tool_calls" and len(one.message.tool_calls) == 1


def test_tool_choice_auto_gives_text_or_a_valid_call(client):
    for question in ["What is the weather in Paris?", "Write one word."]:
        c = client.chat.completions.create(model=CHAT, temperature=0, max_tokens=80, tools=[WEATHER],
                                           messages=[{"role": "user", "content": question}]).choices[0]
        if c.message.tool_calls:  # finish "tool_calls", or "length" with the calls it finished
            assert c.finish_reason in ("tool_calls", "length") and c.message.content is None
            for call in c.message.tool_calls:
                jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
        else:
            assert c.message.content and c.message.tool_calls is None


def test_sixteen_concurrent_mixed_requests_are_all_valid(client):
    schema = City.model_json_schema()

    def one(i: int) -> bool:
        kind = i % 4
        kwargs = dict(model=CHAT, temperature=0.8, seed=i, max_tokens=60,
                      messages=[{"role": "user", "content": f"Describe city number {i}."}])
        if kind == 0:
            r = client.chat.completions.create(**kwargs, response_format={
                "type": "json_schema", "json_schema": {"name": "City", "schema": schema, "strict": True}})
            c = r.choices[0]
            return c.finish_reason == "length" or jsonschema.validate(json.loads(c.message.content),
                                                                      schema) is None
        if kind == 1:
            r = client.chat.completions.create(**kwargs, tools=[WEATHER], tool_choice="required")
            c = r.choices[0]
            return c.finish_reason == "length" or json.loads(
                c.message.tool_calls[0].function.arguments)["city"] is not None
        if kind == 2:
            return bool(client.chat.completions.create(**kwargs, logprobs=True).choices[0].logprobs.content)
        return bool(client.chat.completions.create(**kwargs).choices[0].message.content)

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(one, range(16)))


@pytest.mark.parametrize("body,param", [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}},
     "response_format"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"n": 9}, "n"),
    ({"logit_bias": {"999999": 1}}, "logit_bias"),
])
def test_bad_structured_requests_are_400_naming_the_field(serve_url, body, param):
    r = httpx.post(f"{serve_url}/v1/chat/completions", timeout=60,
                   json={"model": CHAT, "messages": ASK, "max_tokens": 4, **body})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_bad_request_through_the_client(client):
    with pytest.raises(BadRequestError):
        client.chat.completions.create(model=CHAT, messages=ASK, tool_choice="required")


@pytest.fixture(scope="module")
def langchain_chat(serve_url) -> ChatOpenAI:
    return ChatOpenAI(base_url=f"{serve_url}/v1", api_key="unused", model=CHAT, temperature=0,
                      max_tokens=60, max_retries=0, timeout=120)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])  # response_format, tools
def test_langchain_with_structured_output(langchain_chat, method):
    structured = langchain_chat.with_structured_output(City, method=method)
    city = structured.invoke(PARIS)
    assert isinstance(city, City) and city.name
    *_, streamed = structured.stream(PARIS)  # LangChain parses the streamed deltas itself
    assert streamed == city


def test_langchain_json_mode_gives_a_dict(langchain_chat):
    # json_object constrains to JSON, not to a schema: LangChain hands back the parsed object
    answer = langchain_chat.with_structured_output(method="json_mode").invoke(PARIS)
    assert isinstance(answer, dict)


def test_langchain_gathers_parallel_tool_calls_streamed_and_not(langchain_chat):
    roomy = langchain_chat.model_copy(update={"max_tokens": 120})  # two calls and the repeat that ends them
    chat = roomy.bind_tools([WEATHER, TIME], tool_choice="required")
    question = "What is the weather in Paris and in London?"
    answer = chat.invoke(question)
    calls = [(c["name"], c["args"]) for c in answer.tool_calls]
    assert answer.response_metadata["finish_reason"] == "tool_calls" and len(calls) >= 2
    assert all(name in ("get_weather", "get_time") for name, _ in calls)
    chunks = list(chat.stream(question))
    gathered = chunks[0]
    for chunk in chunks[1:]:
        gathered += chunk  # LangChain joins the pieces of each call by its index
    assert [(c["name"], c["args"]) for c in gathered.tool_calls] == calls
