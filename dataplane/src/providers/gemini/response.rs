//! A complete Gemini answer as an OpenAI `chat.completion` (text parts
//! joined into `content`, thought parts as `reasoning_content`, function
//! calls as `tool_calls` with ids as [`call_id`] makes them, the finish
//! reason mapped, `usageMetadata` as usage with cached content as
//! `prompt_tokens_details.cached_tokens`), and a `batchEmbedContents`
//! answer as OpenAI's embeddings list.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::wire::{ResponseView, call_id, finish_reason};
use crate::metering::Usage;
use crate::providers::ErrorFields;
use crate::providers::anthropic::response::{AssistantMessage, FunctionOut, ToolCallOut, chat_completion};

/// One call of an answer, with its generated id.
pub(super) struct Call<'a> {
    pub id: String,
    pub name: &'a str,
    pub arguments: &'a str,
}

/// The `chat.completion` for a complete Gemini answer, named `model`, and
/// its usage; the error a body describes when it is no answer (Google's
/// error object, with a 200).
pub(crate) fn completion(body: &[u8], model: &str) -> Result<(Vec<u8>, Usage), ErrorFields> {
    let answer = match serde_json::from_slice::<ResponseView<'_>>(body) {
        Ok(a)
            if a.error.is_none()
                && (!a.candidates.is_empty() || a.usage_metadata.is_some() || a.prompt_feedback.is_some()) =>
        {
            a
        }
        _ => return Err(super::error_fields(body)),
    };
    let usage = Usage::from(answer.usage_metadata.unwrap_or_default());
    let response_id = answer.response_id.as_deref().unwrap_or_default();
    let mut text: Option<String> = None;
    let mut reasoning: Option<String> = None;
    let mut calls: Vec<Call<'_>> = Vec::new();
    let candidate = answer.candidates.first();
    for part in candidate.and_then(|c| c.content.as_ref()).map_or(&[][..], |c| &c.parts) {
        if let Some(call) = &part.function_call {
            calls.push(Call {
                id: call_id(response_id, calls.len(), call, part.thought_signature.as_deref()),
                name: &call.name,
                arguments: call.args.map_or("{}", RawValue::get),
            });
        } else if let Some(t) = &part.text {
            let into = if part.thought == Some(true) { &mut reasoning } else { &mut text };
            into.get_or_insert_default().push_str(t);
        }
    }
    let finish = match (candidate.and_then(|c| c.finish_reason.as_deref()), &answer.prompt_feedback) {
        (Some(reason), _) => finish_reason(reason, !calls.is_empty()),
        // No candidate: the prompt itself was blocked.
        (None, Some(feedback)) if feedback.block_reason.is_some() => "content_filter",
        (None, _) => finish_reason("STOP", !calls.is_empty()),
    };
    let calls = calls
        .iter()
        .map(|c| ToolCallOut {
            index: None,
            id: Some(&c.id),
            kind: Some("function"),
            function: FunctionOut { name: Some(c.name), arguments: c.arguments },
        })
        .collect();
    let message = AssistantMessage::new(text, reasoning, calls);
    Ok((chat_completion(response_id, model, message, finish, usage), usage))
}

/// OpenAI's embeddings list for a `batchEmbedContents` answer, named
/// `model`. Gemini reports no tokens for embeddings: the usage is `None`
/// (the gateway counts the input itself) and the client's is zero.
pub(crate) fn embeddings(body: &[u8], model: &str) -> Result<Vec<u8>, ErrorFields> {
    #[derive(Deserialize)]
    struct Batch<'a> {
        #[serde(borrow)]
        embeddings: Vec<Values<'a>>,
    }
    #[derive(Deserialize)]
    struct Values<'a> {
        #[serde(borrow)]
        values: &'a RawValue,
    }
    let batch: Batch<'_> = serde_json::from_slice(body).map_err(|_| super::error_fields(body))?;
    Ok(embedding_list(model, batch.embeddings.iter().map(|e| e.values), 0))
}

/// OpenAI's embeddings list of `vectors` (JSON arrays of floats), named
/// `model`, with `prompt_tokens` as its usage.
pub(crate) fn embedding_list<'a>(
    model: &str,
    vectors: impl Iterator<Item = &'a RawValue>,
    prompt_tokens: u64,
) -> Vec<u8> {
    #[derive(Serialize)]
    struct List<'a> {
        object: &'static str,
        data: Vec<Embedding<'a>>,
        model: &'a str,
        usage: EmbeddingUsage,
    }
    #[derive(Serialize)]
    struct Embedding<'a> {
        object: &'static str,
        index: usize,
        embedding: &'a RawValue,
    }
    #[derive(Serialize)]
    struct EmbeddingUsage {
        prompt_tokens: u64,
        total_tokens: u64,
    }
    let list = List {
        object: "list",
        data: vectors
            .enumerate()
            .map(|(index, embedding)| Embedding { object: "embedding", index, embedding })
            .collect(),
        model,
        usage: EmbeddingUsage { prompt_tokens, total_tokens: prompt_tokens },
    };
    serde_json::to_vec(&list).unwrap_or_default()
}
