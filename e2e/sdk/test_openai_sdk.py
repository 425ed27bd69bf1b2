"""The official `openai` Python SDK, unchanged, pointed at the gateway: the
same code against a mock channel, an OpenAI channel, an Anthropic channel
(`claude-mock`), a Gemini channel (`gemini-mock`) and a Cohere channel
(`command-mock`), whose requests and answers the gateway translates."""

from __future__ import annotations

import json

import openai
import pytest

CHAT_MODELS = ["demo-chat", "gpt-4o-mini", "claude-mock", "gemini-mock", "command-mock"]

@pytest.fixture
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://{gateway.addr}/v1", api_key=gateway.client_key, max_retries=0)


MESSAGES = [{"role": "user", "content": "Hello from the SDK"}]


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_completion(client: openai.OpenAI, model: str) -> None:
    completion = client.chat.completions.create(model=model, messages=MESSAGES)
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content.endswith("You said: Hello from the SDK")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_streaming_chat_completion(client: openai.OpenAI, model: str) -> None:
    stream = client.chat.completions.create(model=model, messages=MESSAGES, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.endswith("You said: Hello from the SDK")
    assert len(chunks) > 3, "the answer should arrive in several chunks"
    assert chunks[-1].choices[0].finish_reason == "stop"
    # The client did not ask for usage, so no usage chunk reaches it.
    assert all(c.usage is None for c in chunks)


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_streaming_with_include_usage_returns_the_usage_chunk(client: openai.OpenAI, model: str) -> None:
    stream = client.chat.completions.create(
        model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.completion_tokens > 0
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert last.usage.completion_tokens == len(content_chunks)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city now",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


def first_turn(client: openai.OpenAI, model: str, stream: bool, content: str = "Weather in Paris?"):
    """The model's tool calls for a question, as (id, name, arguments) and the finish reason."""
    messages = [{"role": "user", "content": content}]
    if not stream:
        completion = client.chat.completions.create(model=model, messages=messages, tools=TOOLS)
        calls = completion.choices[0].message.tool_calls
        return [(c.id, c.function.name, c.function.arguments) for c in calls], completion.choices[0].finish_reason
    calls: dict[int, list[str]] = {}
    finish = None
    for chunk in client.chat.completions.create(model=model, messages=messages, tools=TOOLS, stream=True):
        if not chunk.choices:
            continue
        for delta in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(delta.index, ["", "", ""])
            call[0] += delta.id or ""
            call[1] += (delta.function.name or "") if delta.function else ""
            call[2] += (delta.function.arguments or "") if delta.function else ""
        finish = chunk.choices[0].finish_reason or finish
    return [tuple(calls[i]) for i in sorted(calls)], finish


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-mock", "gemini-mock", "command-mock"])
def test_two_turn_tool_conversation(client: openai.OpenAI, model: str, stream: bool) -> None:
    calls, finish = first_turn(client, model, stream)
    assert finish == "tool_calls"
    assert len(calls) == 1
    call_id, name, arguments = calls[0]
    assert name == "get_weather" and call_id
    assert json.loads(arguments) == {"city": 'mock "value"'}
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "sunny"},
    ]
    completion = client.chat.completions.create(model=model, messages=messages, tools=TOOLS)
    assert completion.choices[0].message.content == "The tool said: sunny"
    assert completion.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-mock", "gemini-mock", "command-mock"])
def test_parallel_tool_calls_stream_apart(client: openai.OpenAI, model: str) -> None:
    calls, finish = first_turn(client, model, True, "Paris and Oslo? mock:parallel")
    assert finish == "tool_calls"
    assert len(calls) == 2 and calls[0][0] != calls[1][0]
    assert all(json.loads(arguments) == {"city": 'mock "value"'} for _, _, arguments in calls)


def test_models_list_shows_only_what_the_key_may_use(client: openai.OpenAI) -> None:
    ids = sorted(m.id for m in client.models.list())
    assert ids == [
        "claude-mock", "command-mock", "demo-chat", "demo-embed", "gemini-mock", "gpt-4o-mini", "text-embedding-3-small"
    ]
    assert client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"


@pytest.mark.parametrize("model", ["demo-embed", "text-embedding-3-small"])
def test_embeddings(client: openai.OpenAI, model: str) -> None:
    # The SDK asks for base64 and decodes it itself.
    result = client.embeddings.create(model=model, input=["first", "second"])
    assert [d.index for d in result.data] == [0, 1]
    assert all(len(d.embedding) == 16 for d in result.data)
    assert abs(sum(v * v for v in result.data[0].embedding) - 1.0) < 1e-4
    assert result.data[0].embedding != result.data[1].embedding
    assert result.usage.prompt_tokens > 0


def test_bad_key_is_an_authentication_error(gateway) -> None:
    bad = openai.OpenAI(base_url=f"http://{gateway.addr}/v1", api_key="lw-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.chat.completions.create(model="demo-chat", messages=MESSAGES)
    assert err.value.code == "invalid_api_key"


def test_model_outside_the_allowlist_is_permission_denied(client: openai.OpenAI) -> None:
    with pytest.raises(openai.PermissionDeniedError) as err:
        client.chat.completions.create(model="secret-model", messages=MESSAGES)
    assert err.value.code == "model_not_allowed"


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o-does-not-exist", messages=MESSAGES)
    assert err.value.code == "model_not_found"


def test_malformed_request_is_a_bad_request(client: openai.OpenAI) -> None:
    # Refused by the gateway itself, with OpenAI's code, before any channel.
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="demo-chat", messages="not a list")
    assert err.value.code == "invalid_type"
    assert "'messages'" in err.value.message
