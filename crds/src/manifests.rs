//! Reading resources from YAML manifests, as `kubectl apply -f` and the API
//! server would: every Channel, ApiKey, RoutingPolicy and NamespacePolicy is
//! admitted against its CRD ([`crate::validation`]) before it is taken.

use std::fmt;
use std::path::Path;

use k8s_openapi::api::core::v1::Secret;
use kube::Resource;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::compiler::Resources;
use crate::validation::{self, AdmitError};

/// Where a document is in its text: its number counted from 1, as people
/// count, and the line (from 1) it starts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// 1 for the first document of the text.
    pub document: usize,
    /// The line of the document's `---` marker, or of its first content when
    /// it has no marker; `None` if the text could not be split into documents.
    pub line: Option<usize>,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "document {} (line {line})", self.document),
            None => write!(f, "document {}", self.document),
        }
    }
}

/// A document that could not be read. Carries the document's position, kind and
/// name but never its content (it may be a Secret).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The YAML does not parse (the message has the line and column).
    #[error("{at}: not valid YAML: {source}")]
    Yaml { at: Position, source: serde_yaml::Error },
    /// A document that is not a mapping, so not a Kubernetes object.
    #[error("{at}: not a Kubernetes object (a mapping with apiVersion and kind)")]
    NotAnObject { at: Position },
    /// The API server would refuse the object; the message is its answer.
    #[error("{at}: {source}")]
    Rejected { at: Position, source: AdmitError },
    /// A second object with the kind, namespace and name of one read before
    /// (`object`, as `ApiKey team-a/app`; `first` says where, as `path, document N (line L)` or `document N (line L)`).
    #[error(
        "{at}: {object} is already defined in {first} (the API server keeps one object per kind, \
         namespace and name)"
    )]
    Duplicate { at: Position, object: String, first: String },
    /// The object passed its schema but does not fit the Rust types.
    #[error("{at} ({kind} {name}): {source}")]
    Invalid { at: Position, kind: String, name: String, source: serde_json::Error },
}

/// An object's identity in the API server: its kind, namespace and name.
type ObjectKey = (String, String, String);

/// What one text yields: the objects that were admitted, each one's identity
/// and position, and the errors of the other documents.
type Read = (Resources, Vec<(ObjectKey, Position)>, Vec<ManifestError>);

/// Adds every Channel, ApiKey, RoutingPolicy, NamespacePolicy and core/v1 Secret of a
/// (multi-document) YAML text to `into`, defaulting the namespace to
/// `default`. Other kinds are skipped, so a folder may hold any manifests.
/// Returns how many documents were taken; on error nothing of this text is
/// added, so a half-edited file cannot leave a half-read config. The error is
/// the text's first; [`Folder::add`] returns them all.
pub fn parse_into(text: &str, into: &mut Resources) -> Result<usize, ManifestError> {
    let (mut staged, keys, mut errors) = read(text);
    if !errors.is_empty() {
        return Err(errors.remove(0));
    }
    append(into, &mut staged);
    Ok(keys.len())
}

fn append(into: &mut Resources, staged: &mut Resources) {
    into.channels.append(&mut staged.channels);
    into.api_keys.append(&mut staged.api_keys);
    into.routing_policies.append(&mut staged.routing_policies);
    into.namespace_policies.append(&mut staged.namespace_policies);
    into.secrets.append(&mut staged.secrets);
}

/// Reads every document of `text`, with every document's error (the first
/// YAML syntax error ends the text: what follows cannot be split reliably).
fn read(text: &str) -> Read {
    let lines = document_lines(text);
    let mut staged = Resources::default();
    let mut keys: Vec<(ObjectKey, Position)> = Vec::new();
    let mut errors = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let at = Position { document: index + 1, line: lines.get(index).copied() };
        let mut value = match Value::deserialize(doc) {
            Ok(value) => value,
            Err(source) => {
                errors.push(ManifestError::Yaml { at, source });
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        if !value.is_object() {
            errors.push(ManifestError::NotAnObject { at });
            continue;
        }
        integral_floats_to_integers(&mut value);
        let field = |key: &str| value.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
        let key = match (field("apiVersion").as_str(), field("kind").as_str()) {
            ("llmweaver.io/v1alpha1", "Channel") => admitted(value, at).map(|o| push(&mut staged.channels, o)),
            ("llmweaver.io/v1alpha1", "ApiKey") => admitted(value, at).map(|o| push(&mut staged.api_keys, o)),
            ("llmweaver.io/v1alpha1", "RoutingPolicy") => {
                admitted(value, at).map(|o| push(&mut staged.routing_policies, o))
            }
            ("llmweaver.io/v1alpha1", "NamespacePolicy") => {
                admitted(value, at).map(|o| push(&mut staged.namespace_policies, o))
            }
            ("v1", "Secret") => validation::admit_metadata(&value, "Secret")
                .map_err(|source| ManifestError::Rejected { at, source })
                .and_then(|()| decoded::<Secret>(value, at))
                .map(|o| push(&mut staged.secrets, o)),
            _ => continue,
        };
        match key {
            Ok(key) => match keys.iter().find(|(k, _)| *k == key) {
                Some((_, first)) => errors.push(ManifestError::duplicate(at, &key, first.to_string())),
                None => keys.push((key, at)),
            },
            Err(e) => errors.push(e),
        }
    }
    (staged, keys, errors)
}

/// Adds `obj` to `list` and returns its identity.
fn push<K: Resource<DynamicType = ()>>(list: &mut Vec<K>, obj: K) -> ObjectKey {
    let meta = obj.meta();
    let key =
        (K::kind(&()).into_owned(), meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default());
    list.push(obj);
    key
}

/// The objects of several manifest files, read as `kubectl apply -f DIR`
/// sends them to one API server: each kind, namespace and name names one
/// object, so a second document with the same identity is an error naming
/// both places (the API server would keep only one of them).
#[derive(Default)]
pub struct Folder {
    /// Every object read so far.
    pub resources: Resources,
    /// Where each object was read.
    seen: std::collections::HashMap<ObjectKey, String>,
}

impl Folder {
    /// Adds the objects of `text`, read from `path`, and returns how many it
    /// had. On errors nothing of the text is added and every error of every
    /// document is returned, each once.
    pub fn add(&mut self, path: &Path, text: &str) -> Result<usize, Vec<ManifestError>> {
        let (mut staged, keys, mut errors) = read(text);
        let duplicates = keys
            .iter()
            .filter_map(|(key, at)| self.seen.get(key).map(|first| ManifestError::duplicate(*at, key, first.clone())));
        errors.extend(duplicates);
        if !errors.is_empty() {
            errors.sort_by_key(|e| e.position().document);
            return Err(errors);
        }
        for (key, at) in &keys {
            self.seen.insert(key.clone(), format!("{}, {at}", path.display()));
        }
        append(&mut self.resources, &mut staged);
        Ok(keys.len())
    }

    /// How many Channels, ApiKeys, RoutingPolicies and NamespacePolicies were
    /// read (Secrets alone configure nothing).
    pub fn objects(&self) -> usize {
        let r = &self.resources;
        r.channels.len() + r.api_keys.len() + r.routing_policies.len() + r.namespace_policies.len()
    }
}

impl ManifestError {
    /// The document the error is about.
    pub fn position(&self) -> Position {
        match self {
            Self::Yaml { at, .. }
            | Self::NotAnObject { at }
            | Self::Rejected { at, .. }
            | Self::Duplicate { at, .. }
            | Self::Invalid { at, .. } => *at,
        }
    }

    fn duplicate(at: Position, (kind, namespace, name): &ObjectKey, first: String) -> Self {
        Self::Duplicate { at, object: format!("{kind} {namespace}/{name}"), first }
    }
}

/// One of our kinds, after the admission the API server would give it.
fn admitted<K>(mut value: Value, at: Position) -> Result<K, ManifestError>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    validation::admit::<K>(&mut value).map_err(|source| ManifestError::Rejected { at, source })?;
    decoded(value, at)
}

fn decoded<K>(value: Value, at: Position) -> Result<K, ManifestError>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    let name = value.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
    let mut obj: K = serde_json::from_value(value).map_err(|source| ManifestError::Invalid {
        at,
        kind: K::kind(&()).into_owned(),
        name,
        source,
    })?;
    obj.meta_mut().namespace.get_or_insert_with(|| "default".to_owned());
    Ok(obj)
}

/// `kubectl` sends YAML as JSON, where `100.0` and `1e4` become the integers
/// `100` and `10000`; do the same so that an integer field reads them alike.
fn integral_floats_to_integers(value: &mut Value) {
    match value {
        Value::Number(n) => {
            // Only integral values well within i64 range, so the cast is exact.
            if let Some(f) = n.as_f64().filter(|f| n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15) {
                *n = serde_json::Number::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_to_integers),
        Value::Object(fields) => fields.values_mut().for_each(integral_floats_to_integers),
        _ => {}
    }
}

/// The line (from 1) each document of a YAML stream starts on, in the order the
/// YAML parser yields them: a `---` marker starts a document; so does the first
/// content of the stream, or after a `...` end marker, when no marker precedes
/// it. YAML forbids both markers at the start of a line inside a document's
/// content, so the scan needs no parsing.
fn document_lines(text: &str) -> Vec<usize> {
    let marker =
        |line: &str, m: &str| line.strip_prefix(m).is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']));
    let mut starts = Vec::new();
    let mut in_document = false;
    for (i, line) in text.lines().enumerate() {
        if marker(line, "---") {
            starts.push(i + 1);
            in_document = true;
        } else if marker(line, "...") {
            in_document = false;
        } else if !in_document {
            let content = line.trim_start();
            if !(content.is_empty() || content.starts_with('#') || content.starts_with('%')) {
                starts.push(i + 1);
                in_document = true;
            }
        }
    }
    starts
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHANNEL: &str = "apiVersion: llmweaver.io/v1alpha1\nkind: Channel\nmetadata: {name: c}\n\
                           spec: {provider: openai, models: [{name: m}], weight: 20000}\n";

    fn error(text: &str) -> String {
        match parse_into(text, &mut Resources::default()) {
            Ok(n) => panic!("expected an error, took {n} documents"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn documents_are_numbered_from_one_with_the_line_they_start_on() {
        let text = format!("# header\n\napiVersion: v1\nkind: ConfigMap\n---\n# a comment\n{CHANNEL}");
        assert_eq!(
            error(&text),
            "document 2 (line 5): Channel.llmweaver.io \"c\" is invalid: spec.weight: Invalid value: 20000: \
             spec.weight in body should be less than or equal to 10000"
        );
        assert!(error(CHANNEL).starts_with("document 1 (line 1): "));
        assert!(
            error(&format!("---\n---\n{CHANNEL}")).starts_with("document 2 (line 2): "),
            "an empty document counts"
        );
    }

    #[test]
    fn document_starts_follow_the_markers() {
        assert_eq!(document_lines("a: 1\n---\nb: 2\n"), [1, 2]);
        assert_eq!(document_lines("# c\n\n--- # x\na: 1\n---\n"), [3, 5]);
        assert_eq!(document_lines("a: |\n  ---\n  text\n---\nb: 1\n...\n# c\nc: 1\n"), [1, 4, 8]);
        assert_eq!(document_lines("%YAML 1.2\n---\na: 1\n"), [2]);
        assert_eq!(document_lines("---a: 1\n"), [1], "`---a` is content, not a marker");
    }

    #[test]
    fn yaml_errors_carry_the_file_line() {
        let text = format!("{CHANNEL}---\napiVersion: v1\nkind: [\n");
        let e = error(&text.replace("20000", "1"));
        assert!(e.starts_with("document 2 (line 5): not valid YAML: "), "{e}");
        assert!(e.contains("line 8"), "{e}");
    }

    #[test]
    fn a_rejected_text_adds_nothing() {
        let mut resources = Resources::default();
        let good = CHANNEL.replace("20000", "1").replace("name: c", "name: good");
        assert!(parse_into(&format!("{good}---\n{CHANNEL}"), &mut resources).is_err());
        assert!(resources.channels.is_empty());
    }

    #[test]
    fn admitted_objects_carry_defaults_and_a_namespace() -> Result<(), ManifestError> {
        let mut resources = Resources::default();
        let text = CHANNEL.replace("weight: 20000", "weight: 5e1");
        assert_eq!(parse_into(&text, &mut resources)?, 1);
        let channel = &resources.channels[0];
        assert_eq!(channel.spec.weight, 50, "YAML floats with integral values read as integers, as with kubectl");
        assert_eq!(channel.metadata.namespace.as_deref(), Some("default"));
        Ok(())
    }

    #[test]
    fn scalars_are_not_objects() {
        assert_eq!(
            error("hello\n"),
            "document 1 (line 1): not a Kubernetes object (a mapping with apiVersion and kind)"
        );
    }

    fn key(name: &str) -> String {
        format!("apiVersion: llmweaver.io/v1alpha1\nkind: ApiKey\nmetadata: {{name: {name}}}\nspec: {{}}\n")
    }

    fn folder_errors(folder: &mut Folder, path: &str, text: &str) -> Vec<String> {
        match folder.add(Path::new(path), text) {
            Ok(n) => panic!("expected errors, took {n} documents"),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn every_document_is_reported_once() {
        let text = format!("{CHANNEL}---\nhello\n---\n{}", key("Bad_Name!"));
        let errors = folder_errors(&mut Folder::default(), "a.yaml", &text);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("document 1 (line 1): Channel.llmweaver.io \"c\" is invalid: spec.weight"));
        assert!(errors[1].starts_with("document 2 (line 5): not a Kubernetes object"));
        assert!(
            errors[2].starts_with("document 3 (line 7): ApiKey.llmweaver.io \"Bad_Name!\" is invalid: metadata.name")
        );
    }

    #[test]
    fn an_object_is_defined_once_per_kind_namespace_and_name() -> Result<(), Vec<ManifestError>> {
        let mut folder = Folder::default();
        assert_eq!(folder.add(Path::new("keys/a.yaml"), &key("demo"))?, 1);
        assert_eq!(
            folder_errors(&mut folder, "keys/b.yaml", &format!("---\n{}", key("demo"))),
            ["document 1 (line 1): ApiKey default/demo is already defined in keys/a.yaml, document 1 (line 1) \
              (the API server keeps one object per kind, namespace and name)"]
        );
        assert_eq!(folder.resources.api_keys.len(), 1, "the refused text added nothing");
        let twice = format!("{}---\n{}", key("other"), key("other"));
        let errors = folder_errors(&mut folder, "c.yaml", &twice);
        assert!(errors[0].contains("ApiKey default/other is already defined in document 1 (line 1)"), "{errors:?}");
        // The same name in another namespace, or of another kind, is another object.
        let elsewhere = key("demo").replace("{name: demo}", "{name: demo, namespace: team-a}");
        let channel = CHANNEL.replace("20000", "1").replace("name: c", "name: demo");
        assert_eq!(folder.add(Path::new("d.yaml"), &format!("{elsewhere}---\n{channel}"))?, 2);
        assert_eq!(folder.objects(), 3);
        Ok(())
    }

    #[test]
    fn secrets_get_the_name_rules_but_keep_their_fields() {
        let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: Creds}\nstringData: {apiKey: x}\n";
        let errors = folder_errors(&mut Folder::default(), "s.yaml", secret);
        assert!(
            errors[0].starts_with("document 1 (line 1): Secret \"Creds\" is invalid: metadata.name: "),
            "{errors:?}"
        );
        let mut folder = Folder::default();
        assert!(folder.add(Path::new("s.yaml"), &secret.replace("Creds", "creds")).is_ok());
        assert_eq!(folder.objects(), 0, "a Secret alone configures nothing");
    }
}
