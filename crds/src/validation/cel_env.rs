//! The CEL environment `x-kubernetes-validations` rules run in: the CEL
//! standard library (`has`, `all`, `in`, `matches`, `double`, `size`...) plus
//! the functions of the Kubernetes CEL library that our rules call, with the
//! semantics the API server gives them.
//!
//! `matches` is registered here rather than taken from the cel crate, whose
//! version compiles the pattern on every call (most of the time spent admitting
//! manifests with prices and durations).
//!
//! Kubernetes CEL libraries:
//! <https://kubernetes.io/docs/reference/using-api/cel/#kubernetes-ip-address-library>
//! (`isIP`) and
//! <https://kubernetes.io/docs/reference/using-api/cel/#kubernetes-cidr-library>
//! (`isCIDR`); source in `k8s.io/apiserver/pkg/cel/library/{ip,cidr}.go`. A rule
//! calling a function that is not registered here fails to evaluate, and the
//! manifest is rejected with that error rather than accepted unchecked.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use cel::common::types::{CelBool, CelString};
use cel::objects::{Key, Map};
use cel::{Context, Env, ExecutionError, Program, Value};

/// The standard environment with the Kubernetes functions our rules use.
pub(super) fn env() -> Result<Env, cel::DeclarationError> {
    let mut env = Env::stdlib();
    cel::add_overload!(env, fn matches: (CelString, CelString) -> Result<CelBool>, id = "matches")?;
    cel::add_member_overload!(env, fn matches: (CelString, CelString) -> Result<CelBool>)?;
    cel::add_overload!(env, fn is_ip: (CelString) -> CelBool, name = "isIP")?;
    cel::add_overload!(env, fn is_cidr: (CelString) -> CelBool, name = "isCIDR")?;
    Ok(env)
}

/// Runs `program` with `self` bound to `this`; a rule holds when it yields `true`.
pub(super) fn holds(env: &Arc<Env>, program: &Program, this: &serde_json::Value) -> Result<bool, ExecutionError> {
    let mut context = Context::with_env(Arc::clone(env));
    context.add_variable_from_value("self", to_cel(this));
    match program.execute(&context)? {
        Value::Bool(holds) => Ok(holds),
        other => Err(ExecutionError::UnexpectedType { got: format!("{:?}", other.type_of()), want: "bool".to_owned() }),
    }
}

/// A JSON value as CEL sees it: integers as `int` (the API server decodes
/// JSON integers as int64), other numbers as `double`, objects as maps.
fn to_cel(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            (None, None) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(items) => Value::List(Arc::new(items.iter().map(to_cel).collect())),
        serde_json::Value::Object(fields) => Value::Map(Map {
            map: Arc::new(fields.iter().map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v))).collect()),
        }),
    }
}

/// `matches(string, string) bool` (also `s.matches(re)`): whether the RE2
/// pattern matches anywhere in the string (CEL standard library; Rust's `regex`
/// has RE2 semantics). Compiled patterns are kept: rules name a few fixed ones.
fn matches(this: &CelString<'_>, pattern: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    static COMPILED: LazyLock<Mutex<HashMap<String, regex::Regex>>> = LazyLock::new(Mutex::default);
    let mut compiled = COMPILED.lock().unwrap_or_else(PoisonError::into_inner);
    let re = match compiled.get(pattern.inner()) {
        Some(re) => re.clone(),
        None => {
            let re = regex::Regex::new(pattern.inner()).map_err(|e| ExecutionError::function_error("matches", e))?;
            // A rule may build patterns from data; keep the cache bounded.
            if compiled.len() >= 256 {
                compiled.clear();
            }
            compiled.insert(pattern.inner().to_owned(), re.clone());
            re
        }
    };
    drop(compiled);
    Ok(CelBool::from(re.is_match(this.inner())))
}

/// `isIP(string) bool`: an IPv4 or IPv6 address; IPv4-mapped IPv6 addresses,
/// zones and IPv4 octets with leading zeros are not allowed.
fn is_ip(s: &CelString<'_>) -> CelBool {
    CelBool::from(parse_ip(s.inner()).is_some())
}

/// `isCIDR(string) bool`: an address (as for `isIP`) and a prefix length in
/// decimal without sign or leading zeros, at most 32 (IPv4) or 128 (IPv6); host
/// bits may be set (`10.0.0.1/8` is a CIDR), as Go's `netip.ParsePrefix` allows.
fn is_cidr(s: &CelString<'_>) -> CelBool {
    let valid = s.inner().rsplit_once('/').is_some_and(|(addr, bits)| {
        let max = match parse_ip(addr) {
            Some(IpAddr::V4(_)) => 32,
            Some(IpAddr::V6(_)) => 128,
            None => return false,
        };
        let canonical =
            !bits.is_empty() && bits.bytes().all(|b| b.is_ascii_digit()) && (bits.len() == 1 || !bits.starts_with('0'));
        canonical && bits.parse::<u8>().is_ok_and(|b| b <= max)
    });
    CelBool::from(valid)
}

/// Go's `netip.ParseAddr` as the Kubernetes library restricts it. Rust's parser
/// already refuses zones (`fe80::1%eth0`) and IPv4 octets with leading zeros.
fn parse_ip(s: &str) -> Option<IpAddr> {
    match s.parse::<IpAddr>().ok()? {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => None,
        ip => Some(ip),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn eval(rule: &str, this: serde_json::Value) -> Result<bool, ExecutionError> {
        let env = Arc::new(env().unwrap_or_else(|e| panic!("{e}")));
        let program = env.compile(rule).unwrap_or_else(|e| panic!("{e}"));
        holds(&env, &program, &this)
    }

    #[test]
    fn ip_and_cidr_follow_the_kubernetes_library() {
        for ip in ["127.0.0.1", "::1", "2001:db8::abcd", "::"] {
            assert_eq!(eval("isIP(self)", json!(ip)), Ok(true), "{ip}");
        }
        for not_ip in ["127.0.0.256", ":::1", "010.0.0.1", "::ffff:1.2.3.4", "fe80::1%eth0", "10.0.0.0/8", ""] {
            assert_eq!(eval("isIP(self)", json!(not_ip)), Ok(false), "{not_ip}");
        }
        for cidr in ["10.0.0.0/8", "10.0.0.1/8", "0.0.0.0/0", "::/0", "2001:db8::/32", "192.168.0.0/32"] {
            assert_eq!(eval("isCIDR(self)", json!(cidr)), Ok(true), "{cidr}");
        }
        for not_cidr in
            ["10.0.0.0/33", "10.0.0.0/08", "10.0.0.0/", "10.0.0.0/+8", "10.0.0.0", "::/129", "::ffff:1.2.3.4/120"]
        {
            assert_eq!(eval("isCIDR(self)", json!(not_cidr)), Ok(false), "{not_cidr}");
        }
    }

    #[test]
    fn the_rules_of_our_crds_evaluate() {
        let money = r"self.matches('^[0-9]+(\\.[0-9]{1,6})?$') && double(self) > 0.0";
        assert_eq!(eval(money, json!("50.00")), Ok(true));
        assert_eq!(eval(money, json!("0")), Ok(false));
        assert_eq!(eval(money, json!("-1")), Ok(false));
        let either = "has(self.name) != has(self.selector)";
        assert_eq!(eval(either, json!({"name": "x"})), Ok(true));
        assert_eq!(eval(either, json!({"name": "x", "selector": {}})), Ok(false));
        let base_url = "has(self.baseUrl) || !(self.provider in ['azure-openai', 'openai-compatible'])";
        assert_eq!(eval(base_url, json!({"provider": "azure-openai"})), Ok(false));
        assert_eq!(eval(base_url, json!({"provider": "openai"})), Ok(true));
        assert_eq!(eval("self.all(c, isCIDR(c) || isIP(c))", json!(["10.0.0.1", "10.0.0.0/8"])), Ok(true));
        assert!(eval("self.size()", json!("abc")).is_err(), "a rule must yield a bool");
        assert_eq!(eval("matches(self, 'b+')", json!("abbc")), Ok(true), "unanchored, as RE2");
        assert!(eval("self.matches('(')", json!("x")).is_err(), "a bad pattern is an error");
    }
}
