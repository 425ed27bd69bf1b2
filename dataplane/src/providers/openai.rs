//! The OpenAI wire format and its family: OpenAI, Azure OpenAI, Mistral, Zhipu,
//! Qwen (compatible mode), ERNIE (Qianfan v2), Ollama, vLLM and any
//! OpenAI-compatible server. They differ only in URL layout and auth header.

use http::{HeaderName, HeaderValue};
use weaver_crds::Provider;
use weaver_crds::snapshot::{ChannelSnapshot, ModelSnapshot};

use super::Endpoint;

/// The upstream URL of one operation for one model.
pub fn url(channel: &ChannelSnapshot, model: &ModelSnapshot, endpoint: Endpoint) -> String {
    let base = &channel.base_url;
    match (channel.provider, &channel.azure_api_version) {
        // Dated Azure API: the deployment is in the path, the version in the query.
        (Provider::AzureOpenai, Some(version)) => {
            format!("{base}/openai/deployments/{}{}?api-version={version}", model.upstream, endpoint.path())
        }
        (Provider::AzureOpenai, None) => format!("{base}/openai/v1{}", endpoint.path()),
        _ => format!("{base}{}", endpoint.path()),
    }
}

/// The header that carries the channel's credential.
pub fn auth_header(channel: &ChannelSnapshot) -> Option<(HeaderName, HeaderValue)> {
    let credential = channel.credential.as_ref()?;
    let (name, value) = match channel.provider {
        Provider::AzureOpenai => (HeaderName::from_static("api-key"), credential.0.clone()),
        _ => (http::header::AUTHORIZATION, format!("Bearer {}", credential.0)),
    };
    let mut value = HeaderValue::from_str(&value).ok()?;
    value.set_sensitive(true);
    Some((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weaver_crds::money::Prices;
    use weaver_crds::snapshot::{Credential, TimeoutsSnapshot};

    fn channel(provider: Provider, base: &str, azure: Option<&str>) -> ChannelSnapshot {
        ChannelSnapshot {
            namespace: "ns".into(),
            name: "c".into(),
            provider,
            base_url: base.into(),
            credential: Some(Credential("k".into())),
            headers: vec![],
            models: vec![],
            timeouts: TimeoutsSnapshot::default(),
            azure_api_version: azure.map(str::to_owned),
        }
    }

    fn model() -> ModelSnapshot {
        ModelSnapshot { name: "gpt-4o".into(), upstream: "prod-4o".into(), prices: Prices::default() }
    }

    #[test]
    fn azure_dated_api_puts_the_deployment_in_the_path() {
        let ch = channel(Provider::AzureOpenai, "https://r.openai.azure.com", Some("2024-10-21"));
        assert_eq!(
            url(&ch, &model(), Endpoint::Chat),
            "https://r.openai.azure.com/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21"
        );
        let (name, value) = auth_header(&ch).unwrap_or_else(|| panic!("no auth header"));
        assert_eq!((name.as_str(), value.to_str().ok()), ("api-key", Some("k")));
    }

    #[test]
    fn azure_v1_and_the_openai_family_append_the_operation_path() {
        let azure = channel(Provider::AzureOpenai, "https://r.openai.azure.com", None);
        assert_eq!(url(&azure, &model(), Endpoint::Embeddings), "https://r.openai.azure.com/openai/v1/embeddings");
        let qwen = channel(Provider::Qwen, "https://dashscope-intl.aliyuncs.com/compatible-mode/v1", None);
        assert_eq!(
            url(&qwen, &model(), Endpoint::Chat),
            "https://dashscope-intl.aliyuncs.com/compatible-mode/v1/chat/completions"
        );
        let (name, value) = auth_header(&qwen).unwrap_or_else(|| panic!("no auth header"));
        assert_eq!((name, value.to_str().ok()), (http::header::AUTHORIZATION, Some("Bearer k")));
        assert!(value.is_sensitive());
    }
}
