//! Names in usage records (namespace, key, channel, model, replica): shared,
//! not copied. The gateway hands the names of its configuration snapshot to
//! every record it meters, so a record costs a reference count per name
//! rather than an allocation and a copy (and, once written, a free).

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An immutable, cheaply cloned string. Serialises, compares, hashes and
/// orders as the string it holds.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(Arc<str>);

impl Name {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Name {
    /// The empty name (a record without a key, a model or a channel), one
    /// shared allocation for all.
    fn default() -> Self {
        static EMPTY: OnceLock<Arc<str>> = OnceLock::new();
        Name(EMPTY.get_or_init(|| Arc::from("")).clone())
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<Arc<str>> for Name {
    fn from(value: Arc<str>) -> Self {
        Name(value)
    }
}

impl From<&str> for Name {
    fn from(value: &str) -> Self {
        Name(Arc::from(value))
    }
}

impl From<String> for Name {
    fn from(value: String) -> Self {
        Name(Arc::from(value))
    }
}

impl From<&String> for Name {
    fn from(value: &String) -> Self {
        Name(Arc::from(value.as_str()))
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<Name> for str {
    fn eq(&self, other: &Name) -> bool {
        *self == *other.0
    }
}

impl PartialEq<Name> for &str {
    fn eq(&self, other: &Name) -> bool {
        **self == *other.0
    }
}

impl PartialEq<Name> for String {
    fn eq(&self, other: &Name) -> bool {
        **self == *other.0
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Name::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_and_compares_as_its_text() {
        let name = Name::from("team-a");
        assert_eq!(serde_json::to_string(&name).ok().as_deref(), Some("\"team-a\""));
        assert_eq!(serde_json::from_str::<Name>("\"team-a\"").ok(), Some(name.clone()));
        assert_eq!(name, "team-a");
        assert_eq!(format!("{name} {name:?}"), "team-a \"team-a\"");
        assert!(Name::default().is_empty());
    }
}
