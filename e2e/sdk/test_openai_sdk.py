"""The official `openai` Python SDK, unchanged, pointed at the gateway."""

from __future__ import annotations

import openai
import pytest

@pytest.fixture
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://{gateway.addr}/v1", api_key=gateway.client_key, max_retries=0)


MESSAGES = [{"role": "user", "content": "Hello from the SDK"}]


@pytest.mark.parametrize("model", ["demo-chat", "gpt-4o-mini"])
def test_chat_completion(client: openai.OpenAI, model: str) -> None:
    completion = client.chat.completions.create(model=model, messages=MESSAGES)
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content.endswith("You said: Hello from the SDK")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


@pytest.mark.parametrize("model", ["demo-chat", "gpt-4o-mini"])
def test_streaming_chat_completion(client: openai.OpenAI, model: str) -> None:
    stream = client.chat.completions.create(model=model, messages=MESSAGES, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.endswith("You said: Hello from the SDK")
    assert len(chunks) > 3, "the answer should arrive in several chunks"
    assert chunks[-1].choices[0].finish_reason == "stop"
    # The client did not ask for usage, so no usage chunk reaches it.
    assert all(c.usage is None for c in chunks)


@pytest.mark.parametrize("model", ["demo-chat", "gpt-4o-mini"])
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


def test_models_list_shows_only_what_the_key_may_use(client: openai.OpenAI) -> None:
    ids = sorted(m.id for m in client.models.list())
    assert ids == ["demo-chat", "demo-embed", "gpt-4o-mini", "text-embedding-3-small"]
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
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="demo-chat", messages="not a list")
    assert err.value.code == "invalid_messages"
