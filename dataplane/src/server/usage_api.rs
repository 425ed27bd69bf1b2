//! The usage API (`weaver-usage-api`) on the admin listener of a standalone
//! gateway with a usage store: the admin token that guards it and the key
//! directory it reads from the live snapshot. Cluster-mode gateways do not
//! serve it (the operator does), nor does a gateway with `--store off`.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{HeaderMap, header};
use rand::Rng as _;
use rand::distr::Alphanumeric;
use sha2::{Digest as _, Sha256};
use weaver_usage_api::{ApiError, KeyDirectory, KeyInfo, LedgerAmounts, Scope};

use crate::clock::unix_millis;
use crate::state::Gateway;

/// The file in `--data-dir` that holds the generated admin token.
pub const TOKEN_FILE: &str = "admin-token";

/// Why there is no admin token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("admin token file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("admin token {0} is empty")]
    Empty(String),
    #[error(
        "admin token file {0} may be read by its group or others; `chmod 600` it (or remove it to have a new one generated)"
    )]
    Exposed(PathBuf),
}

/// Where the token came from, for the start-up log (never the token itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `WEAVER_ADMIN_TOKEN` / `--admin-token`.
    Given,
    /// `--admin-token-file`.
    File(PathBuf),
    /// `<data-dir>/admin-token`, generated now (`true`) or by an earlier start.
    DataDir(PathBuf, bool),
}

/// The admin token, held as its SHA-256 only.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl AdminToken {
    fn new(token: &str) -> AdminToken {
        AdminToken { digest: Sha256::digest(token.as_bytes()).into() }
    }

    /// The token given (`WEAVER_ADMIN_TOKEN`), else read from `file`, else the
    /// one in `<data_dir>/admin-token`, generated (mode 0600) when absent.
    /// Blocking file I/O: call at start-up.
    pub fn load(
        given: Option<&str>,
        file: Option<&Path>,
        data_dir: &Path,
    ) -> Result<(AdminToken, TokenSource), TokenError> {
        if let Some(text) = given {
            let token = text.trim();
            if token.is_empty() {
                return Err(TokenError::Empty("WEAVER_ADMIN_TOKEN".into()));
            }
            return Ok((AdminToken::new(token), TokenSource::Given));
        }
        if let Some(path) = file {
            return Ok((AdminToken::new(&read(path)?), TokenSource::File(path.to_owned())));
        }
        let path = data_dir.join(TOKEN_FILE);
        let io = |source| TokenError::Io { path: path.clone(), source };
        std::fs::create_dir_all(data_dir).map_err(io)?;
        // 256 bits from a CSPRNG, like the operator's client keys.
        let fresh: String = rand::rng().sample_iter(&Alphanumeric).take(43).map(char::from).collect();
        let fresh = format!("lwa-{fresh}");
        // `create_new`: never overwrite a token someone is using; two starts
        // racing on one folder both end up with the file's token.
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
            Ok(mut f) => {
                f.write_all(format!("{fresh}\n").as_bytes()).and_then(|()| f.sync_all()).map_err(io)?;
                Ok((AdminToken::new(&fresh), TokenSource::DataDir(path, true)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let mode = std::fs::metadata(&path).map_err(io)?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(TokenError::Exposed(path));
                }
                Ok((AdminToken::new(&read(&path)?), TokenSource::DataDir(path, false)))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// A token known by its SHA-256 only (lowercase or uppercase hex), as
    /// the operator's is named in the snapshot; `None` for anything else.
    pub(crate) fn from_hex(sha256: &str) -> Option<AdminToken> {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(sha256, &mut digest).ok()?;
        Some(AdminToken { digest })
    }

    /// Whether `presented` is the token. Digests are compared in full, without
    /// stopping at the first difference, so timing says nothing about it.
    pub(crate) fn matches(&self, presented: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        d.iter().zip(&self.digest).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

fn read(path: &Path) -> Result<String, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Io { path: path.to_owned(), source })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenError::Empty(path.display().to_string()));
    }
    Ok(token.to_owned())
}

impl AdminToken {
    /// Whether a request carries the token as `Authorization: Bearer`; the
    /// admin token sees every namespace.
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<Scope, ApiError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthenticated(
                "missing admin token: send `Authorization: Bearer <token>` (the token is in --admin-token-file, \
                 WEAVER_ADMIN_TOKEN, or <data-dir>/admin-token)",
            ));
        };
        let presented = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
        match presented {
            Some(token) if self.matches(token) => Ok(Scope::All),
            _ => Err(ApiError::unauthenticated("invalid admin token")),
        }
    }
}

/// Keys as the live snapshot has them.
pub struct LiveKeys(pub Arc<Gateway>);

impl KeyDirectory for LiveKeys {
    async fn key(&self, namespace: &str, name: &str) -> Result<Option<KeyInfo>, ApiError> {
        // A scan of the snapshot's keys: an admin read, off the request path,
        // so no index is kept per snapshot for it.
        let live = self.0.live();
        let Some(key) = live.keys.iter().find(|k| k.namespace.as_str() == namespace && k.name.as_str() == name) else {
            return Ok(None);
        };
        let ledger = match key.own_budget() {
            Some(budget) => {
                let totals = self.0.ledger.totals(&budget.id(unix_millis())).await.map_err(ApiError::from_store)?;
                Some(LedgerAmounts::new(&totals, budget.state.reserved()))
            }
            None => None,
        };
        Ok(Some(KeyInfo { budget: key.budget, ledger }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (first, source) = AdminToken::load(None, None, &data).unwrap();
        let path = data.join(TOKEN_FILE);
        assert_eq!(source, TokenSource::DataDir(path.clone(), true));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(first.matches(text.trim()) && text.trim().len() == 47);
        let (again, source) = AdminToken::load(None, None, &data).unwrap();
        assert_eq!(source, TokenSource::DataDir(path.clone(), false));
        assert_eq!(again.digest, first.digest);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(AdminToken::load(None, None, &data), Err(TokenError::Exposed(_))));
    }

    #[test]
    fn given_tokens_win() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let (t, _) = AdminToken::load(Some("given"), Some(&file), dir.path()).unwrap();
        assert!(t.matches("given") && !t.matches("from-file"));
        let (t, _) = AdminToken::load(None, Some(&file), dir.path()).unwrap();
        assert!(t.matches("from-file"));
        assert!(!dir.path().join(TOKEN_FILE).exists(), "nothing is generated when a token is given");
    }
}
