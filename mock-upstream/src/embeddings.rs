//! Deterministic embeddings: one unit vector per input, derived from its text.

use base64::Engine as _;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::chat::estimate_tokens;
use crate::error::UpstreamError;
use crate::request::Request;

/// Vector length when the request names no `dimensions`.
const DEFAULT_DIMENSIONS: usize = 16;

/// Answers an embeddings request: `input` as a string, strings, a token array
/// or token arrays; `dimensions` long vectors (default 16), as floats or, with
/// `encoding_format: "base64"`, as little-endian `f32` bytes in base64.
pub(crate) fn answer(request: &Request) -> Result<Vec<u8>, UpstreamError> {
    let (texts, prompt_tokens) = inputs(request.get("input"))?;
    let dimensions = request
        .get("dimensions")
        .and_then(Value::as_u64)
        .map_or(DEFAULT_DIMENSIONS, |d| usize::try_from(d).unwrap_or(usize::MAX))
        .clamp(1, 4096);
    let base64 = request.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Embedding> = texts
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let vector = unit_vector(text, dimensions);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Vector::Floats(vector)
            };
            Embedding { object: "embedding", index, embedding }
        })
        .collect();
    let body = List {
        object: "list",
        data,
        model: &request.model,
        usage: EmbeddingUsage { prompt_tokens, total_tokens: prompt_tokens },
    };
    Ok(serde_json::to_vec(&body).unwrap_or_default())
}

/// The texts to embed (token arrays by their digits) and their token count.
fn inputs(input: Option<&Value>) -> Result<(Vec<String>, u64), UpstreamError> {
    let invalid = || UpstreamError::invalid_type("input", "a string, an array of strings or token arrays");
    let token_array = |v: &[Value]| -> Option<String> {
        let tokens: Option<Vec<u64>> = v.iter().map(Value::as_u64).collect();
        tokens.map(|t| format!("{t:?}"))
    };
    match input {
        None | Some(Value::Null) => Err(UpstreamError::missing("input")),
        Some(Value::String(s)) => Ok((vec![s.clone()], estimate_tokens(s))),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            let texts: Vec<String> = items.iter().filter_map(Value::as_str).map(str::to_owned).collect();
            let tokens = texts.iter().map(|t| estimate_tokens(t)).sum();
            Ok((texts, tokens))
        }
        Some(Value::Array(items)) if items.iter().all(Value::is_u64) => {
            Ok((vec![token_array(items).ok_or_else(invalid)?], items.len() as u64))
        }
        Some(Value::Array(items)) => {
            let arrays: Option<Vec<&Vec<Value>>> = items.iter().map(Value::as_array).collect();
            let arrays = arrays.ok_or_else(invalid)?;
            let texts: Option<Vec<String>> = arrays.iter().map(|a| token_array(a)).collect();
            Ok((texts.ok_or_else(invalid)?, arrays.iter().map(|a| a.len() as u64).sum()))
        }
        Some(_) => Err(invalid()),
    }
}

/// A unit vector from the SHA-256 chain of the text: the same text always
/// gives the same vector.
pub(crate) fn unit_vector(text: &str, dimensions: usize) -> Vec<f32> {
    let mut raw = Vec::with_capacity(dimensions + 32);
    let mut block = Sha256::digest(text.as_bytes());
    while raw.len() < dimensions {
        raw.extend(block.iter().map(|b| f32::from(*b) - 127.5));
        block = Sha256::digest(block);
    }
    raw.truncate(dimensions);
    let norm = raw.iter().map(|v| v * v).sum::<f32>().sqrt().max(f32::EPSILON);
    raw.iter().map(|v| v / norm).collect()
}

#[derive(Serialize)]
struct List<'a> {
    object: &'static str,
    data: Vec<Embedding>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Serialize)]
struct Embedding {
    object: &'static str,
    index: usize,
    embedding: Vector,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Vector {
    Floats(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embed(body: &str) -> Result<Value, UpstreamError> {
        let request = Request::parse(body.as_bytes())?;
        Ok(serde_json::from_slice(&answer(&request)?).unwrap_or_default())
    }

    #[test]
    fn vectors_are_deterministic_unit_vectors_of_the_asked_size() -> Result<(), UpstreamError> {
        let a = embed(r#"{"model":"e","input":["a","b"],"dimensions":8}"#)?;
        let b = embed(r#"{"model":"e","input":["a","b"],"dimensions":8}"#)?;
        assert_eq!(a, b);
        assert_eq!(a["model"], "e");
        assert_eq!(a["usage"], serde_json::json!({"prompt_tokens": 2, "total_tokens": 2}));
        let v: Vec<f64> =
            a["data"][1]["embedding"].as_array().into_iter().flatten().filter_map(Value::as_f64).collect();
        assert_eq!(v.len(), 8);
        assert!((v.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-4);
        assert_ne!(a["data"][0]["embedding"], a["data"][1]["embedding"]);
        Ok(())
    }

    #[test]
    fn base64_is_little_endian_f32() -> Result<(), UpstreamError> {
        let floats = embed(r#"{"model":"e","input":"x","dimensions":4}"#)?;
        let b64 = embed(r#"{"model":"e","input":"x","dimensions":4,"encoding_format":"base64"}"#)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64["data"][0]["embedding"].as_str().unwrap_or_default())
            .unwrap_or_default();
        let decoded: Vec<f64> =
            bytes.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect();
        let expected: Vec<f64> =
            floats["data"][0]["embedding"].as_array().into_iter().flatten().filter_map(Value::as_f64).collect();
        assert_eq!((decoded.len(), expected.len()), (4, 4));
        // The float form is f32's shortest decimal, read back as f64 here.
        assert!(decoded.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-6), "{decoded:?} vs {expected:?}");
        Ok(())
    }

    #[test]
    fn token_inputs_count_their_tokens_and_bad_inputs_are_400() -> Result<(), UpstreamError> {
        assert_eq!(embed(r#"{"model":"e","input":[1,2,3]}"#)?["usage"]["prompt_tokens"], 3);
        assert_eq!(embed(r#"{"model":"e","input":[[1,2],[3]]}"#)?["data"].as_array().map(Vec::len), Some(2));
        for body in [r#"{"model":"e"}"#, r#"{"model":"e","input":5}"#, r#"{"model":"e","input":[[1],"a"]}"#] {
            assert_eq!(embed(body).err().map(|e| e.param), Some(Some("input")), "{body}");
        }
        Ok(())
    }
}
