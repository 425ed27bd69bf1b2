"""The official `anthropic` Python SDK, unchanged, pointed at the gateway's
Messages API: with an Anthropic channel behind it (`claude-mock`: passed
through), with an OpenAI channel (`gpt-4o-mini`: translated), and with a
Gemini (`gemini-mock`) and a Cohere channel (`command-mock`: translated
through chat completions)."""

from __future__ import annotations

import anthropic
import pytest

MODELS = ["claude-mock", "gpt-4o-mini", "gemini-mock", "command-mock"]

TOOLS = [
    {
        "name": "get_weather",
        "description": "The weather in a city now",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]

QUESTION = {"role": "user", "content": "Hello from the SDK"}


@pytest.fixture
def client(gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"http://{gateway.addr}", api_key=gateway.client_key, max_retries=0)


@pytest.mark.parametrize("model", MODELS)
def test_message(client: anthropic.Anthropic, model: str) -> None:
    message = client.messages.create(model=model, max_tokens=200, system="Be brief.", messages=[QUESTION])
    assert message.type == "message" and message.role == "assistant"
    assert message.model == model
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text.endswith("You said: Hello from the SDK")
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_streaming(client: anthropic.Anthropic, model: str) -> None:
    with client.messages.stream(model=model, max_tokens=200, messages=[QUESTION]) as stream:
        # Anthropic channels pass on the empty first delta real streams have.
        pieces = [piece for piece in stream.text_stream if piece]
        final = stream.get_final_message()
    assert len(pieces) > 3, "the answer should arrive in several deltas"
    assert "".join(pieces).endswith("You said: Hello from the SDK")
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens == len(pieces)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", MODELS)
def test_tool_call_round_trip(client: anthropic.Anthropic, model: str, stream: bool) -> None:
    ask = {"model": model, "max_tokens": 200, "tools": TOOLS, "messages": [{"role": "user", "content": "Weather in Paris?"}]}
    if stream:
        with client.messages.stream(**ask) as events:
            first = events.get_final_message()
    else:
        first = client.messages.create(**ask)
    assert first.stop_reason == "tool_use"
    uses = [block for block in first.content if block.type == "tool_use"]
    assert len(uses) == 1
    assert uses[0].name == "get_weather" and uses[0].input == {"city": 'mock "value"'}
    second = client.messages.create(
        model=model,
        max_tokens=200,
        tools=TOOLS,
        messages=[
            ask["messages"][0],
            {"role": "assistant", "content": first.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "sunny"}]},
        ],
    )
    assert second.content[0].text == "The tool said: sunny"
    assert second.stop_reason == "end_turn"


@pytest.mark.parametrize("model", MODELS)
def test_count_tokens(client: anthropic.Anthropic, model: str) -> None:
    counted = client.messages.count_tokens(model=model, system="Be brief.", messages=[QUESTION], tools=TOOLS)
    assert counted.input_tokens > 0


def test_errors_are_anthropic_shaped(gateway, client: anthropic.Anthropic) -> None:
    bad = anthropic.Anthropic(base_url=f"http://{gateway.addr}", api_key="lw-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as err:
        bad.messages.create(model="claude-mock", max_tokens=10, messages=[QUESTION])
    assert err.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.PermissionDeniedError):
        client.messages.create(model="secret-model", max_tokens=10, messages=[QUESTION])
    with pytest.raises(anthropic.NotFoundError) as err:
        client.messages.create(model="claude-does-not-exist", max_tokens=10, messages=[QUESTION])
    assert err.value.body["error"]["type"] == "not_found_error"


def test_an_error_mid_stream_is_raised(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.APIStatusError) as err:
        with client.messages.stream(model="claude-mock", max_tokens=200, messages=[{"role": "user", "content": "mock:error-mid-stream"}]) as stream:
            for _ in stream.text_stream:
                pass
    assert err.value.body["error"]["type"] == "overloaded_error"
