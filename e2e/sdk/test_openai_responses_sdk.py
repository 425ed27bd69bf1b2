"""The official `openai` Python SDK's Responses API (`client.responses`),
unchanged, pointed at the gateway: with an OpenAI channel behind it
(`gpt-4o-mini`: passed through) and with Anthropic, Gemini and Cohere
channels (`claude-mock`, `gemini-mock`, `command-mock`: translated through
chat completions)."""

from __future__ import annotations

import json

import openai
import pytest

MODELS = ["gpt-4o-mini", "claude-mock", "gemini-mock", "command-mock"]

TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


@pytest.fixture
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://{gateway.addr}/v1", api_key=gateway.client_key, max_retries=0)


@pytest.mark.parametrize("model", MODELS)
def test_response(client: openai.OpenAI, model: str) -> None:
    response = client.responses.create(
        model=model, instructions="Be brief.", input="Hello from the SDK", store=False, temperature=0.5
    )
    assert response.object == "response" and response.status == "completed"
    if model != "gpt-4o-mini":  # passed through: the mock upstream echoes nothing
        assert response.instructions == "Be brief." and response.temperature == 0.5, "the settings are echoed"
    assert response.model == model
    assert response.output_text.endswith("You said: Hello from the SDK")
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


@pytest.mark.parametrize("model", MODELS)
def test_streaming(client: openai.OpenAI, model: str) -> None:
    events = list(client.responses.create(model=model, input="Hello from the SDK", stream=True))
    types = [event.type for event in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    pieces = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert len(pieces) > 3, "the answer should arrive in several deltas"
    text = "".join(pieces)
    assert text.endswith("You said: Hello from the SDK")
    done = next(event for event in events if event.type == "response.output_text.done")
    assert done.text == text
    final = events[-1].response
    assert final.output_text == text
    assert final.usage.output_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", MODELS)
def test_function_call_round_trip(client: openai.OpenAI, model: str, stream: bool) -> None:
    question = {"role": "user", "content": "Weather in Paris?"}
    if stream:
        events = list(client.responses.create(model=model, input=[question], tools=TOOLS, stream=True))
        deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
        # Gemini sends a call whole; the others stream its arguments.
        assert len(deltas) > (0 if model == "gemini-mock" else 1), "the arguments arrive in fragments"
        first = events[-1].response
        assert "".join(deltas) == first.output[-1].arguments
    else:
        first = client.responses.create(model=model, input=[question], tools=TOOLS)
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": 'mock "value"'}
    second = client.responses.create(
        model=model,
        tools=TOOLS,
        input=[
            question,
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
    )
    assert second.output_text == "The tool said: sunny"


def test_state_is_refused_where_no_channel_keeps_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="claude-mock", input="Go on", previous_response_id="resp_123")
    assert err.value.code == "stateful_request_unsupported"
