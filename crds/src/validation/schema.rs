//! A CRD's structural schema, read once: translated into JSON Schema for the
//! OpenAPI value checks, and kept as a tree for what JSON Schema has no word for
//! (defaults, nullable, `x-kubernetes-list-type: map`, CEL rules).
//!
//! Only what our CRDs use is accepted; any other keyword or rule option fails
//! the build with [`SchemaError::Unsupported`], so a new kind of rule in the
//! types fails the tests here instead of silently going unchecked in standalone
//! mode.

use std::collections::BTreeMap;
use std::sync::Arc;

use jsonschema::error::ValidationErrorKind;
use jsonschema::paths::LocationSegment;
use serde_json::{Map, Value};

use super::{FieldError, SchemaError, cel_env, go_fmt};

/// One node of a structural schema.
#[derive(Default)]
pub(super) struct Node {
    /// `type` as written (`object`, `string`...), for messages.
    type_name: String,
    nullable: bool,
    default: Option<Value>,
    properties: BTreeMap<String, Node>,
    additional: Option<Box<Node>>,
    items: Option<Box<Node>>,
    /// `x-kubernetes-list-map-keys` of a list of `x-kubernetes-list-type: map`.
    map_keys: Option<Vec<String>>,
    /// `x-kubernetes-preserve-unknown-fields: true`: members the schema does
    /// not declare are kept, not pruned.
    preserve_unknown: bool,
    rules: Vec<Rule>,
}

/// One `x-kubernetes-validations` rule.
struct Rule {
    program: cel::Program,
    /// The rule's source, for messages.
    rule: String,
    message: Option<String>,
}

/// Formats of strings that the API server checks and JSON Schema checks the
/// same way. The numeric formats our types emit (`int32`, `uint32`...) are not
/// among the API server's supported formats: it ignores them, and so do we.
const CHECKED_FORMATS: &[&str] = &["date-time"];
const IGNORED_FORMATS: &[&str] = &["int32", "int64", "uint32", "uint64", "float", "double"];

/// Keywords copied as they are into the JSON Schema (draft 4, as OpenAPI 3.0).
const VALUE_KEYWORDS: &[&str] = &[
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "maxProperties",
    "required",
];

/// Kubernetes extensions that change nothing when an object is created.
const NO_OP_EXTENSIONS: &[&str] = &["x-kubernetes-map-type"];

impl Node {
    /// Reads a structural schema (`openAPIV3Schema`) and returns its tree and
    /// its JSON Schema translation. `at` names the schema node in errors.
    pub(super) fn build(schema: &Value, at: &str, env: &cel::Env) -> Result<(Node, Value), SchemaError> {
        let unsupported = |what: String| SchemaError::Unsupported { at: at.to_owned(), what };
        let Value::Object(fields) = schema else { return Err(unsupported("a schema that is not an object".into())) };
        let mut node = Node { nullable: fields.get("nullable") == Some(&Value::Bool(true)), ..Node::default() };
        let mut out = Map::new();
        for (key, value) in fields {
            match key.as_str() {
                "description" | "title" | "nullable" => {}
                "type" => {
                    node.type_name = value.as_str().unwrap_or_default().to_owned();
                    out.insert(key.clone(), nullable(value.clone(), node.nullable));
                }
                "default" => node.default = Some(value.clone()),
                "enum" => {
                    let mut options = value.as_array().cloned().unwrap_or_default();
                    if node.nullable {
                        options.push(Value::Null);
                    }
                    out.insert(key.clone(), Value::Array(options));
                }
                "format" => match value.as_str().unwrap_or_default() {
                    f if CHECKED_FORMATS.contains(&f) => {
                        out.insert(key.clone(), value.clone());
                    }
                    f if IGNORED_FORMATS.contains(&f) => {}
                    f => return Err(unsupported(format!("format {f:?}"))),
                },
                k if VALUE_KEYWORDS.contains(&k) => {
                    out.insert(key.clone(), value.clone());
                }
                "properties" => {
                    let mut translated = Map::new();
                    for (name, sub) in value.as_object().into_iter().flatten() {
                        let (child, json) = Node::build(sub, &format!("{at}.{name}"), env)?;
                        node.properties.insert(name.clone(), child);
                        translated.insert(name.clone(), json);
                    }
                    out.insert(key.clone(), Value::Object(translated));
                }
                "items" => {
                    let (child, json) = Node::build(value, &format!("{at}[*]"), env)?;
                    node.items = Some(Box::new(child));
                    out.insert(key.clone(), json);
                }
                "additionalProperties" => {
                    let (child, json) = Node::build(value, &format!("{at}[*]"), env)?;
                    node.additional = Some(Box::new(child));
                    out.insert(key.clone(), json);
                }
                "x-kubernetes-validations" => {
                    for rule in value.as_array().into_iter().flatten() {
                        node.rules.extend(Rule::build(rule, at, env)?);
                    }
                }
                "x-kubernetes-list-type" => match value.as_str().unwrap_or_default() {
                    "atomic" => {}
                    "map" => {
                        let keys = fields.get("x-kubernetes-list-map-keys").and_then(Value::as_array);
                        let keys = keys.into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect();
                        node.map_keys = Some(keys);
                    }
                    other => return Err(unsupported(format!("x-kubernetes-list-type {other:?}"))),
                },
                "x-kubernetes-list-map-keys" => {}
                "x-kubernetes-preserve-unknown-fields" => node.preserve_unknown = value == &Value::Bool(true),
                k if NO_OP_EXTENSIONS.contains(&k) => {}
                other => return Err(unsupported(format!("the keyword {other:?}"))),
            }
        }
        Ok((node, Value::Object(out)))
    }

    /// The schema of the member `name` of an object of this schema.
    fn member(&self, name: &str) -> Option<&Node> {
        self.properties.get(name).or(self.additional.as_deref())
    }

    /// Adds to `out` the path of every member under `value`, the member `key`
    /// of an object at `path`, that the schema does not declare: what the API
    /// server's pruning removes (apiextensions-apiserver `pruning.PruneWithOptions`
    /// with `ReturnPruned`) and strict field validation, kubectl's default since
    /// Kubernetes 1.27, refuses. Members kept by `additionalProperties` or
    /// `x-kubernetes-preserve-unknown-fields` are not unknown.
    pub(super) fn unknown_member(&self, key: &str, value: &Value, path: &str, out: &mut Vec<String>) {
        let path = child(path, key);
        match self.member(key) {
            Some(node) => node.unknown_fields(value, &path, out),
            None if self.preserve_unknown => {}
            None => out.push(path),
        }
    }

    fn unknown_fields(&self, value: &Value, path: &str, out: &mut Vec<String>) {
        match value {
            Value::Object(fields) => fields.iter().for_each(|(k, v)| self.unknown_member(k, v, path, out)),
            Value::Array(items) => {
                if let Some(node) = &self.items {
                    for (i, v) in items.iter().enumerate() {
                        node.unknown_fields(v, &format!("{path}[{i}]"), out);
                    }
                }
            }
            _ => {}
        }
    }

    /// Drops nulls where the schema neither allows them nor has a default
    /// (apiextensions-apiserver `PruneNonNullableNullsWithoutDefaults`).
    pub(super) fn prune_nulls(&self, value: &mut Value) {
        match value {
            Value::Object(fields) => {
                fields.retain(|k, v| {
                    !(v.is_null() && self.member(k).is_some_and(|n| !n.nullable && n.default.is_none()))
                });
                for (k, v) in fields.iter_mut() {
                    if let Some(node) = self.member(k) {
                        node.prune_nulls(v);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(node) = &self.items {
                    items.iter_mut().for_each(|v| node.prune_nulls(v));
                }
            }
            _ => {}
        }
    }

    /// Fills in defaults for absent members and for non-nullable nulls
    /// (apiextensions-apiserver `structuraldefaulting.Default`).
    pub(super) fn apply_defaults(&self, value: &mut Value) {
        let fill = |node: &Node, v: &mut Value| {
            if v.is_null() && !node.nullable {
                *v = node.default.clone().unwrap_or(Value::Null);
            }
        };
        match value {
            Value::Object(fields) => {
                for (k, prop) in &self.properties {
                    let Some(default) = &prop.default else { continue };
                    match fields.get_mut(k) {
                        None => {
                            fields.insert(k.clone(), default.clone());
                        }
                        Some(v) if v.is_null() && !prop.nullable => *v = default.clone(),
                        Some(_) => {}
                    }
                }
                for (k, v) in fields.iter_mut() {
                    if let Some(prop) = self.properties.get(k) {
                        prop.apply_defaults(v);
                    } else if let Some(node) = &self.additional {
                        fill(node, v);
                        node.apply_defaults(v);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(node) = &self.items {
                    for v in items {
                        fill(node, v);
                        node.apply_defaults(v);
                    }
                }
            }
            _ => {}
        }
    }

    /// A JSON Schema error as the API server reports the same violation
    /// (apiextensions-apiserver `kubeOpenAPIResultToFieldErrors` over
    /// kube-openapi's messages).
    pub(super) fn field_error(&self, e: &jsonschema::ValidationError<'_>) -> FieldError {
        // kube-openapi names a map value `parent.key` and a list item `parent[i]`.
        let mut name = String::new();
        let mut node = self;
        for segment in e.instance_path().iter() {
            match segment {
                LocationSegment::Property(p) => {
                    push_child(&mut name, &p);
                    node = node.member(&p).unwrap_or(node);
                }
                LocationSegment::Index(i) => {
                    name.push_str(&format!("[{i}]"));
                    node = node.items.as_deref().unwrap_or(node);
                }
            }
        }
        let v = e.instance();
        let shown = go_fmt::value(v);
        let invalid = |detail: String| FieldError::new(&name, format!("Invalid value: {shown}: {detail}"), false);
        let too_many = |limit: u64| {
            let count = v.as_array().map(Vec::len).or_else(|| v.as_object().map(Map::len)).unwrap_or_default();
            let noun = if limit == 1 { "item" } else { "items" };
            FieldError::new(&name, format!("Too many: {count}: must have at most {limit} {noun}"), true)
        };
        let type_of = |v: &Value| match v {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_f64() => "number",
            Value::Number(_) => "integer",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        match e.kind() {
            ValidationErrorKind::Required { property } => {
                let mut field = name.clone();
                push_child(&mut field, property.as_str().unwrap_or_default());
                FieldError::new(&field, "Required value".to_owned(), true)
            }
            ValidationErrorKind::Enum { options } => {
                let supported: Vec<String> = options
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|o| !o.is_null())
                    .map(|o| go_fmt::quote(o.as_str().map_or_else(|| o.to_string(), str::to_owned).as_str()))
                    .collect();
                let message = format!("Unsupported value: {shown}: supported values: {}", supported.join(", "));
                FieldError::new(&name, message, true)
            }
            ValidationErrorKind::Type { .. } => {
                let actual = type_of(v);
                let detail = format!("{name} in body must be of type {}: \"{actual}\"", node.type_name);
                FieldError::new(&name, format!("Invalid value: \"{actual}\": {detail}"), true)
            }
            ValidationErrorKind::Format { format } => {
                let detail = format!("{name} in body must be of type {format}: {shown}");
                FieldError::new(&name, format!("Invalid value: {shown}: {detail}"), true)
            }
            ValidationErrorKind::Maximum { limit } | ValidationErrorKind::ExclusiveMaximum { limit } => {
                let exclusive = matches!(e.kind(), ValidationErrorKind::ExclusiveMaximum { .. });
                let bound = limit.as_number().map(|n| go_fmt::limit(n, v)).unwrap_or_default();
                let relation = if exclusive { "less than" } else { "less than or equal to" };
                invalid(format!("{name} in body should be {relation} {bound}"))
            }
            ValidationErrorKind::Minimum { limit } | ValidationErrorKind::ExclusiveMinimum { limit } => {
                let exclusive = matches!(e.kind(), ValidationErrorKind::ExclusiveMinimum { .. });
                let bound = limit.as_number().map(|n| go_fmt::limit(n, v)).unwrap_or_default();
                let relation = if exclusive { "greater than" } else { "greater than or equal to" };
                invalid(format!("{name} in body should be {relation} {bound}"))
            }
            ValidationErrorKind::MinLength { limit } => {
                invalid(format!("{name} in body should be at least {limit} chars long"))
            }
            ValidationErrorKind::MaxLength { limit } => {
                let noun = if *limit == 1 { "byte" } else { "bytes" };
                FieldError::new(&name, format!("Too long: may not be more than {limit} {noun}"), true)
            }
            ValidationErrorKind::Pattern { pattern } => invalid(format!("{name} in body should match '{pattern}'")),
            ValidationErrorKind::MinItems { limit } => {
                let count = v.as_array().map(Vec::len).unwrap_or_default();
                FieldError::new(
                    &name,
                    format!("Invalid value: {count}: {name} in body should have at least {limit} items"),
                    false,
                )
            }
            ValidationErrorKind::MaxItems { limit } | ValidationErrorKind::MaxProperties { limit } => too_many(*limit),
            // Keywords the build refuses cannot fail; keep jsonschema's wording if one ever does.
            _ => invalid(e.to_string()),
        }
    }

    /// Keys of `x-kubernetes-list-type: map` lists must be unique
    /// (apiextensions-apiserver `listtype.ValidateListSetsAndMaps`).
    pub(super) fn check_list_maps(&self, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
        match value {
            Value::Object(fields) => {
                for (k, v) in fields {
                    if let Some(prop) = self.properties.get(k) {
                        prop.check_list_maps(v, &child(path, k), errors);
                    } else if let Some(node) = &self.additional {
                        node.check_list_maps(v, &format!("{path}[{k}]"), errors);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(keys) = &self.map_keys {
                    check_map_keys(keys, items, path, errors);
                }
                if let Some(node) = &self.items {
                    for (i, v) in items.iter().enumerate() {
                        node.check_list_maps(v, &format!("{path}[{i}]"), errors);
                    }
                }
            }
            _ => {}
        }
    }

    /// Runs the CEL rules on every non-null value their schema covers
    /// (apiextensions-apiserver `cel.Validator`).
    pub(super) fn check_rules(&self, env: &Arc<cel::Env>, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
        if value.is_null() {
            return;
        }
        let composite = value.is_object() || value.is_array();
        // A rule on the whole object has no field path: Go prints a nil path.
        let field = if path.is_empty() { "<nil>" } else { path };
        for rule in &self.rules {
            match cel_env::holds(env, &rule.program, value) {
                Ok(true) => {}
                Ok(false) => {
                    let detail = match &rule.message {
                        Some(m) => m.clone(),
                        None => format!("failed rule: {}", rule.rule),
                    };
                    let body = if composite {
                        format!("Invalid value: {detail}")
                    } else {
                        format!("Invalid value: {}: {detail}", go_fmt::value(value))
                    };
                    errors.push(FieldError::new(field, body, false));
                }
                Err(e) => {
                    let shown = rule.message.as_deref().unwrap_or(&rule.rule);
                    let body =
                        format!("Invalid value: {}: {e} evaluating rule: {shown}", go_fmt::quote(&self.type_name));
                    errors.push(FieldError::new(field, body, false));
                }
            }
        }
        match value {
            Value::Object(fields) => {
                for (k, v) in fields {
                    if let Some(prop) = self.properties.get(k) {
                        prop.check_rules(env, v, &child(path, k), errors);
                    } else if let Some(node) = &self.additional {
                        node.check_rules(env, v, &format!("{path}[{k}]"), errors);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(node) = &self.items {
                    for (i, v) in items.iter().enumerate() {
                        node.check_rules(env, v, &format!("{path}[{i}]"), errors);
                    }
                }
            }
            _ => {}
        }
    }
}

impl Rule {
    /// Compiles one rule; `None` for a transition rule (one that reads
    /// `oldSelf`), which the API server only runs on updates, never on a create.
    fn build(rule: &Value, at: &str, env: &cel::Env) -> Result<Option<Rule>, SchemaError> {
        let unsupported = |what: String| SchemaError::Unsupported { at: at.to_owned(), what };
        let Value::Object(fields) = rule else { return Err(unsupported("a rule that is not an object".into())) };
        if let Some(option) = fields.keys().find(|k| !matches!(k.as_str(), "rule" | "message")) {
            return Err(unsupported(format!("the rule option {option:?}")));
        }
        let source = fields.get("rule").and_then(Value::as_str).unwrap_or_default().trim().to_owned();
        let program = env.compile(&source).map_err(|e| SchemaError::Rule {
            at: at.to_owned(),
            rule: source.clone(),
            message: e.to_string(),
        })?;
        if program.references().has_variable("oldSelf") {
            return Ok(None);
        }
        let message = fields.get("message").and_then(Value::as_str).map(str::trim).filter(|m| !m.is_empty());
        Ok(Some(Rule { program, rule: source, message: message.map(str::to_owned) }))
    }
}

/// Reports the second occurrence of each key of a list-type map, once, as the
/// API server does; an item that is not an object is reported instead.
fn check_map_keys(keys: &[String], items: &[Value], path: &str, errors: &mut Vec<FieldError>) {
    if let Some(i) = items.iter().position(|x| !(x.is_null() || x.is_object())) {
        let message =
            format!("Invalid value: {}: must be an object for an array of list-type map", go_fmt::value(&items[i]));
        errors.push(FieldError::new(&format!("{path}[{i}]"), message, false));
        return;
    }
    // Each item's key is the object of its key fields.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let key: Map<String, Value> = keys.iter().filter_map(|k| item.get(k).map(|v| (k.clone(), v.clone()))).collect();
        let key = Value::Object(key);
        let times = seen.entry(key.to_string()).or_default();
        *times += 1;
        if *times == 2 {
            errors.push(FieldError::new(&format!("{path}[{i}]"), format!("Duplicate value: {key}"), false));
        }
    }
}

/// `type: T` for a nullable schema: `[T, "null"]`.
fn nullable(type_name: Value, nullable: bool) -> Value {
    if nullable { Value::Array(vec![type_name, Value::String("null".to_owned())]) } else { type_name }
}

fn push_child(path: &mut String, name: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(name);
}

fn child(path: &str, name: &str) -> String {
    let mut p = path.to_owned();
    push_child(&mut p, name);
    p
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn build(schema: Value) -> Result<Node, SchemaError> {
        let env = cel_env::env()?;
        Node::build(&schema, "X", &env).map(|(node, _)| node)
    }

    #[test]
    fn what_admission_does_not_mirror_fails_the_build() {
        for schema in [
            json!({"x-kubernetes-int-or-string": true}),
            json!({"type": "string", "format": "email"}),
            json!({"type": "array", "uniqueItems": true}),
            json!({"type": "array", "x-kubernetes-list-type": "set"}),
            json!({"type": "object", "x-kubernetes-validations": [{"rule": "true", "messageExpression": "'x'"}]}),
            json!({"type": "object", "properties": {"a": {"type": "string", "oneOf": []}}}),
        ] {
            assert!(matches!(build(schema.clone()), Err(SchemaError::Unsupported { .. })), "{schema} was accepted");
        }
        let broken = json!({"type": "string", "x-kubernetes-validations": [{"rule": "self.("}]});
        assert!(matches!(build(broken), Err(SchemaError::Rule { .. })));
    }

    #[test]
    fn unknown_members_respect_preserve_unknown_fields_and_additional_properties() -> Result<(), SchemaError> {
        let node = build(json!({"type": "object", "properties": {
            "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                     "properties": {"known": {"type": "object", "properties": {}}}},
            "map": {"type": "object", "additionalProperties": {"type": "object", "properties": {"a": {"type": "string"}}}},
            "list": {"type": "array", "items": {"type": "object", "properties": {"a": {"type": "string"}}}},
        }}))?;
        let value = json!({
            "open": {"anything": 1, "known": {"typo": 1}},
            "map": {"k": {"a": "x", "b": "y"}},
            "list": [{"a": "x"}, {"c": 1}],
            "extra": true,
        });
        let mut out = Vec::new();
        for (k, v) in value.as_object().into_iter().flatten() {
            node.unknown_member(k, v, "spec", &mut out);
        }
        out.sort();
        assert_eq!(out, ["spec.extra", "spec.list[1].c", "spec.map.k.b", "spec.open.known.typo"]);
        Ok(())
    }

    #[test]
    fn transition_rules_are_left_to_updates() -> Result<(), SchemaError> {
        let rules = json!([{"rule": "self == oldSelf", "message": "immutable"}, {"rule": "size(self) > 0"}]);
        let node = build(json!({"type": "string", "x-kubernetes-validations": rules}))?;
        assert_eq!(node.rules.len(), 1);
        assert_eq!(node.rules[0].message, None);
        Ok(())
    }
}
