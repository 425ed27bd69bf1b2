//! Query parameters: parsed by hand rather than by serde, so that every bad
//! one gets a 400 naming it and saying what would be accepted.

use weaver_store::{GroupBy, Outcome, RecordFilter, UsageFilter};

use crate::error::ApiError;

/// The filters every usage route takes.
pub(crate) const FILTERS: &[&str] = &["from", "to", "namespace", "api_key", "model", "channel"];
/// Filters only raw records know (records and export, not summaries).
pub(crate) const RECORD_FILTERS: &[&str] = &["status", "outcome", "request_id"];

/// The default and largest page of `GET /admin/v1/usage/records`.
pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

/// A query string as name/value pairs, in order, percent-decoded.
#[derive(Debug, Default)]
pub(crate) struct Params {
    pairs: Vec<(String, String)>,
    /// Why the query string could not be decoded, reported after authentication.
    malformed: Option<String>,
}

impl Params {
    pub(crate) fn parse(raw: Option<&str>) -> Params {
        match serde_urlencoded::from_str::<Vec<(String, String)>>(raw.unwrap_or("")) {
            Ok(pairs) => Params { pairs, malformed: None },
            Err(e) => Params { pairs: Vec::new(), malformed: Some(e.to_string()) },
        }
    }

    /// Refuses an undecodable query string and any parameter not in `known`.
    pub(crate) fn check(&self, known: &[&[&str]]) -> Result<(), ApiError> {
        if let Some(why) = &self.malformed {
            return Err(ApiError::unknown_parameter(&format!("(undecodable query string: {why})"), &known.concat()));
        }
        match self.pairs.iter().find(|(name, _)| !known.iter().any(|set| set.contains(&name.as_str()))) {
            Some((name, _)) => Err(ApiError::unknown_parameter(name, &known.concat())),
            None => Ok(()),
        }
    }

    /// A parameter given at most once.
    pub(crate) fn one(&self, name: &'static str) -> Result<Option<&str>, ApiError> {
        let mut values = self.pairs.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str());
        let first = values.next();
        if values.next().is_some() {
            return Err(ApiError::bad_parameter(name, format!("{name} is given more than once")));
        }
        Ok(first)
    }

    /// A list parameter: repeated, comma-separated, or both; blanks dropped.
    pub(crate) fn list(&self, name: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The namespaces asked for (empty: all the caller may see).
    pub(crate) fn namespaces(&self) -> Vec<String> {
        self.list("namespace")
    }

    /// `from`, `to`, `api_key`, `model`, `channel`; the namespaces are set
    /// once authorized.
    pub(crate) fn usage_filter(&self) -> Result<UsageFilter, ApiError> {
        let from_ms = self.one("from")?.map(|t| instant("from", t)).transpose()?;
        let to_ms = self.one("to")?.map(|t| instant("to", t)).transpose()?;
        if let (Some(from), Some(to)) = (from_ms, to_ms)
            && from >= to
        {
            return Err(ApiError::bad_parameter("to", "to must be later than from (the range is [from, to))"));
        }
        let owned = |v: Option<&str>| v.map(str::to_owned);
        Ok(UsageFilter {
            from_ms,
            to_ms,
            namespaces: Vec::new(),
            api_key: owned(self.one("api_key")?),
            model: owned(self.one("model")?),
            channel: owned(self.one("channel")?),
        })
    }

    /// The usage filter plus `status` and `outcome`.
    pub(crate) fn record_filter(&self) -> Result<RecordFilter, ApiError> {
        let status = match self.one("status")? {
            None => None,
            Some(text) => Some(text.parse::<u16>().ok().filter(|s| (100..=599).contains(s)).ok_or_else(|| {
                ApiError::bad_parameter("status", format!("status {text:?} is not an HTTP status code (100-599)"))
            })?),
        };
        let outcome = match self.one("outcome")? {
            None => None,
            Some(text) => Some(Outcome::parse(text).ok_or_else(|| {
                ApiError::bad_parameter(
                    "outcome",
                    format!("unknown outcome {text:?}; expected ok, upstream_error, client_aborted or rejected"),
                )
            })?),
        };
        let request_id = self.one("request_id")?.map(str::to_owned);
        Ok(RecordFilter { usage: self.usage_filter()?, status, outcome, request_id })
    }

    /// `limit`: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent.
    pub(crate) fn limit(&self) -> Result<u32, ApiError> {
        let Some(text) = self.one("limit")? else { return Ok(DEFAULT_LIMIT) };
        text.parse::<u32>().ok().filter(|n| (1..=MAX_LIMIT).contains(n)).ok_or_else(|| {
            ApiError::bad_parameter("limit", format!("limit {text:?} must be a whole number from 1 to {MAX_LIMIT}"))
        })
    }

    /// `group_by`: any of day, hour, key, model, channel (none: one row of totals).
    pub(crate) fn group_by(&self) -> Result<Vec<GroupBy>, ApiError> {
        self.list("group_by")
            .iter()
            .map(|g| {
                GroupBy::parse(g).ok_or_else(|| {
                    ApiError::bad_parameter(
                        "group_by",
                        format!("unknown group_by {g:?}; expected any of day, hour, key, model, channel"),
                    )
                })
            })
            .collect()
    }
}

/// An RFC 3339 instant as unix milliseconds.
fn instant(param: &'static str, text: &str) -> Result<i64, ApiError> {
    let bad = |why: String| {
        // A `+` left unencoded in a query string arrives as a space.
        let hint = if text.contains(' ') { " (encode a + in the offset as %2B)" } else { "" };
        ApiError::bad_parameter(
            param,
            format!("{param} {text:?} is not an RFC 3339 time such as 2026-11-29T00:00:00Z{hint}: {why}"),
        )
    };
    let ts: jiff::Timestamp = text.parse().map_err(|e: jiff::Error| bad(e.to_string()))?;
    Ok(ts.as_millisecond())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_bad_ones_name_their_parameter() {
        let p =
            Params::parse(Some("from=2026-11-29T00:00:00Z&to=2026-11-29T02:00:00%2B01:00&namespace=a,b&namespace=c"));
        let f = p.usage_filter().unwrap();
        assert_eq!((f.from_ms, f.to_ms), (Some(1_795_910_400_000), Some(1_795_914_000_000)));
        assert_eq!(p.namespaces(), ["a", "b", "c"]);
        let err = |q: &str| Params::parse(Some(q)).record_filter().unwrap_err();
        assert_eq!(err("from=yesterday").param, Some("from"));
        assert!(err("from=2026-11-29T00:00:00 01:00").message.contains("%2B"));
        assert_eq!(err("from=2026-11-29T00:00:00Z&to=2026-11-29T00:00:00Z").param, Some("to"));
        assert_eq!(err("outcome=fine").param, Some("outcome"));
        assert_eq!(err("status=42").param, Some("status"));
        assert_eq!(err("model=a&model=b").param, Some("model"));
        for bad in ["limit=0", "limit=1001", "limit=x"] {
            assert_eq!(Params::parse(Some(bad)).limit().unwrap_err().param, Some("limit"));
        }
        assert_eq!(Params::parse(None).limit().unwrap(), DEFAULT_LIMIT);
        assert!(Params::parse(Some("group-by=day")).check(&[FILTERS]).is_err());
        assert_eq!(Params::parse(Some("group_by=day,model")).group_by().unwrap(), [GroupBy::Day, GroupBy::Model]);
        assert!(Params::parse(Some("group_by=week")).group_by().is_err());
    }
}
