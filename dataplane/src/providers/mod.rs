//! Provider adapters. Every provider of this gateway version speaks the OpenAI
//! wire format (`openai`), or answers locally (`mock`).

pub mod mock;
pub mod openai;

/// The OpenAI API operations the gateway relays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Embeddings,
}

impl Endpoint {
    /// The path below an OpenAI-style API root.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/chat/completions",
            Endpoint::Embeddings => "/embeddings",
        }
    }
}
