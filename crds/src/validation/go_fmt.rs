//! Values printed the way the API server's Go code prints them in field errors
//! (apimachinery `field.Error.ErrorBody`: `%v` for numbers and booleans, `%q`
//! for strings, JSON for the rest), so that a standalone message is the same
//! text the cluster answers with.

use serde_json::Value;

/// A rejected value as `ErrorBody` prints it.
pub(super) fn value(v: &Value) -> String {
    match v {
        Value::String(s) => quote(s),
        Value::Number(n) => number(n),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".to_owned(),
        Value::Array(_) | Value::Object(_) => v.to_string(),
    }
}

/// A JSON number as Go holds it after decoding a request body (integers as
/// `int64`, everything else as `float64`) and prints it with `%v`.
fn number(n: &serde_json::Number) -> String {
    match n.as_f64() {
        Some(f) if !(n.is_i64() || n.is_u64()) => float(f),
        _ => n.to_string(),
    }
}

/// A schema limit (`maximum`, `minimum`: a `float64` in the schema) as
/// kube-openapi prints it: converted to `int64` when the rejected value is an
/// integer, `%v` of the float otherwise.
pub(super) fn limit(limit: &serde_json::Number, rejected: &Value) -> String {
    let f = limit.as_f64().unwrap_or_default();
    if rejected.is_i64() || rejected.is_u64() {
        // Go's int64(max) truncates the same way.
        (f as i64).to_string()
    } else {
        float(f)
    }
}

/// `%v` of a `float64`: the shortest representation, in exponent form (`1e+06`)
/// when the exponent is below -4 or at least 6 (strconv's `%g` rule).
pub(super) fn float(f: f64) -> String {
    let sci = format!("{f:e}");
    let Some((mantissa, exp)) = sci.split_once('e') else { return f.to_string() };
    let exp: i32 = exp.parse().unwrap_or_default();
    if (-4..6).contains(&exp) {
        f.to_string()
    } else {
        format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.unsigned_abs())
    }
}

/// Go's `strconv.Quote`: a double-quoted string with Go escapes. Characters Go
/// does not consider printable are approximated as control characters and
/// whitespace other than the ASCII space.
pub(super) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if c.is_control() || (c.is_whitespace() && c != ' ') => {
                let n = u32::from(c);
                if n < 0x80 {
                    out.push_str(&format!("\\x{n:02x}"));
                } else if n < 0x10000 {
                    out.push_str(&format!("\\u{n:04x}"));
                } else {
                    out.push_str(&format!("\\U{n:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn values_print_as_go_prints_them() {
        assert_eq!(value(&json!(20000)), "20000");
        assert_eq!(value(&json!(-1)), "-1");
        assert_eq!(value(&json!(1.5)), "1.5");
        assert_eq!(value(&json!("5 parsecs")), "\"5 parsecs\"");
        assert_eq!(value(&json!(true)), "true");
        assert_eq!(value(&json!(null)), "null");
        assert_eq!(value(&json!({"name": "m"})), r#"{"name":"m"}"#);
    }

    #[test]
    fn floats_switch_to_exponents_where_go_does() {
        assert_eq!(float(10000.0), "10000");
        assert_eq!(float(123456.0), "123456");
        assert_eq!(float(1_000_000.0), "1e+06");
        assert_eq!(float(1_234_567.0), "1.234567e+06");
        assert_eq!(float(0.0001), "0.0001");
        assert_eq!(float(0.00001), "1e-05");
        assert_eq!(float(0.0), "0");
    }

    #[test]
    fn limits_follow_the_rejected_value() {
        let max = serde_json::Number::from_f64(10000.0).unwrap_or_else(|| panic!("finite"));
        assert_eq!(limit(&max, &json!(20000)), "10000");
        assert_eq!(limit(&max, &json!(20000.5)), "10000");
    }

    #[test]
    fn quoting_escapes_like_strconv() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quote("tab\there\n"), r#""tab\there\n""#);
        assert_eq!(quote("\u{1}"), r#""\x01""#);
        assert_eq!(quote("\u{a0}"), r#""\u00a0""#);
        assert_eq!(quote("grüße"), "\"grüße\"");
    }
}
