//! Field types shared by several kinds.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Points at one key of a Secret in the resource's own namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_secret_key() -> String {
    "apiKey".to_owned()
}

/// Go-style durations that both the API server's CEL and our parser accept.
pub const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h))+$";

/// Parses a duration written as `DURATION_PATTERN` allows (`500ms`, `30s`, `1h30m`).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_the_api_examples_parse() {
        assert_eq!(parse_duration("5s"), Ok(std::time::Duration::from_secs(5)));
        assert_eq!(parse_duration("600s"), Ok(std::time::Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(std::time::Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(std::time::Duration::from_millis(250)));
        assert!(parse_duration("5 parsecs").is_err());
    }
}
