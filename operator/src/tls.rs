//! A self-managed CA and serving certificate kept in a Secret.
//!
//! The snapshot stream carries upstream credentials, so the operator serves it over
//! TLS. Gateways trust the CA (`ca.crt`); the serving certificate is reissued from
//! the same CA when it stops covering the wanted names or nears expiry, so gateways
//! need not learn a new CA. The CA key is kept in the Secret (`ca.key`) for that.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{RootCertStore, ServerConfig};
use tracing::Instrument;

pub const CA_CERT_KEY: &str = "ca.crt";
pub const CA_KEY_KEY: &str = "ca.key";
pub const CERT_KEY: &str = "tls.crt";
pub const KEY_KEY: &str = "tls.key";
pub const SECRET_TYPE: &str = "kubernetes.io/tls";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "llm-weaver";
/// Comma-separated SANs of the serving certificate (informational).
pub const SANS_ANNOTATION: &str = "llmweaver.io/sans";
/// Unix seconds after which the serving certificate is invalid.
pub const NOT_AFTER_ANNOTATION: &str = "llmweaver.io/not-after";
/// Unix seconds after which the CA is invalid; certificate verifiers do not check a
/// trust anchor's own validity, so this is how we know when the CA must be replaced.
pub const CA_NOT_AFTER_ANNOTATION: &str = "llmweaver.io/ca-not-after";

const CA_COMMON_NAME: &str = "llm-weaver-ca";
const SERVING_COMMON_NAME: &str = "llm-weaver-operator";
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const SERVING_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Certificates start an hour in the past so a peer whose clock lags still accepts them.
const BACKDATE: Duration = Duration::from_secs(3600);
/// Writes lost to other replicas before we give up.
const MAX_ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid TLS material: {0}")]
    Invalid(String),
    #[error("cannot build the TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("Secret {namespace}/{name} is not managed by llm-weaver and is not usable: {reason}")]
    Foreign { namespace: String, name: String, reason: String },
    #[error("Secret {namespace}/{name} kept changing under us; gave up after {MAX_ATTEMPTS} attempts")]
    Contended { namespace: String, name: String },
}

/// PEM-encoded CA certificate, serving certificate and serving key.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// When the serving certificate and the CA expire (unix seconds), where
    /// known (the Secret's annotations, or what we issued).
    pub not_after: Option<u64>,
    pub ca_not_after: Option<u64>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[redacted]")
            .field("not_after", &self.not_after)
            .field("ca_not_after", &self.ca_not_after)
            .finish()
    }
}

/// Material plus what is needed to issue more from the same CA.
struct Issued {
    material: TlsMaterial,
    ca_key_pem: String,
    ca_not_after: u64,
    not_after: u64,
}

/// Reads Secret `secret_name` in `namespace`, creating or repairing it as needed.
///
/// When it is missing, a CA (ECDSA P-256, 10 years) and a serving certificate (1 year)
/// for `sans` are generated and stored. When the stored serving certificate does not
/// cover every SAN or expires within 30 days, a new one is issued from the same CA.
/// Writes race safely with other replicas: the loser reads the winner's Secret.
pub async fn load_or_create(
    client: &kube::Client,
    namespace: &str,
    secret_name: &str,
    sans: &[String],
) -> Result<TlsMaterial, TlsError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let span = tracing::info_span!("tls_secret", %namespace, secret = %secret_name);
    match sync_secret(&api, namespace, secret_name, sans).instrument(span).await? {
        Some(material) => Ok(material),
        None => Err(TlsError::Contended { namespace: namespace.into(), name: secret_name.into() }),
    }
}

/// The body of [`load_or_create`]; `None` when other replicas won every write.
async fn sync_secret(
    api: &Api<Secret>,
    namespace: &str,
    name: &str,
    sans: &[String],
) -> Result<Option<TlsMaterial>, TlsError> {
    for _ in 0..MAX_ATTEMPTS {
        let now = unix_now();
        let Some(existing) = api.get_opt(name).await? else {
            let issued = generate_at(sans, now)?;
            match api.create(&PostParams::default(), &to_secret(namespace, name, &issued, sans, None)).await {
                Ok(_) => {
                    tracing::info!("created the operator CA and serving certificate");
                    return Ok(Some(issued.material));
                }
                Err(kube::Error::Api(status)) if status.is_already_exists() => continue,
                Err(error) => return Err(error.into()),
            }
        };
        let labels = existing.metadata.labels.as_ref();
        let ours = labels.and_then(|l| l.get(MANAGED_BY_LABEL)).is_some_and(|v| v == MANAGED_BY_VALUE);
        let issued = match assess(&existing, sans, now) {
            Assessment::Usable(material) => return Ok(Some(material)),
            Assessment::Reissue { ca, reason } => {
                tracing::info!(%reason, "issuing a new serving certificate from the existing CA");
                match reissue(&ca, sans, now) {
                    Ok(issued) => issued,
                    // A CA we cannot issue from is as good as none.
                    Err(error) if ours => {
                        tracing::warn!(%error, "replacing the operator CA; gateways must trust the new ca.crt");
                        generate_at(sans, now)?
                    }
                    Err(error) => return Err(error),
                }
            }
            Assessment::Regenerate { reason } if ours => {
                tracing::warn!(%reason, "replacing the operator CA; gateways must trust the new ca.crt");
                generate_at(sans, now)?
            }
            Assessment::Regenerate { reason } => {
                return Err(TlsError::Foreign { namespace: namespace.into(), name: name.into(), reason });
            }
        };
        let secret = to_secret(namespace, name, &issued, sans, Some(existing));
        match api.replace(name, &PostParams::default(), &secret).await {
            Ok(_) => return Ok(Some(issued.material)),
            // Another replica repaired it first; read theirs on the next pass.
            Err(kube::Error::Api(status)) if status.is_conflict() => continue,
            Err(error) => return Err(error.into()),
        }
    }
    Ok(None)
}

/// A rustls server config for the material (ring provider; http/1.1 ALPN).
pub fn server_config(material: &TlsMaterial) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(material.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid(format!("{CERT_KEY}: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError::Invalid(format!("{CERT_KEY}: no certificate")));
    }
    // The error names the problem, never the key's bytes.
    let key = PrivateKeyDer::from_pem_slice(material.key_pem.as_bytes())
        .map_err(|e| TlsError::Invalid(format!("{KEY_KEY}: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Generates fresh material without Kubernetes (used by load_or_create and by tests).
pub fn generate(sans: &[String]) -> Result<TlsMaterial, TlsError> {
    Ok(generate_at(sans, unix_now())?.material)
}

fn generate_at(sans: &[String], now: u64) -> Result<Issued, TlsError> {
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let ca_not_after = now.saturating_add(CA_LIFETIME.as_secs());
    let mut ca_params = ca_params();
    set_validity(&mut ca_params, now.saturating_sub(BACKDATE.as_secs()), ca_not_after);
    ca_params.serial_number = Some(random_serial());
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca = CaMaterial { cert_pem: ca_cert.pem(), key_pem: ca_key.serialize_pem(), not_after: ca_not_after };
    reissue(&ca, sans, now)
}

/// Everything that defines our CA except its validity and serial. A stored CA is
/// turned back into an issuer from these, since parsing certificates would need
/// another dependency; a mismatch shows up when the new certificate fails to verify.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

struct CaMaterial {
    cert_pem: String,
    key_pem: String,
    not_after: u64,
}

/// Issues a serving certificate from the CA and checks it verifies against it.
fn reissue(ca: &CaMaterial, sans: &[String], now: u64) -> Result<Issued, TlsError> {
    if sans.is_empty() {
        return Err(TlsError::Invalid("a serving certificate needs at least one SAN".into()));
    }
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::new(ca_params(), ca_key);

    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    // Parses each SAN as an IP address where it is one, a DNS name otherwise.
    let mut params = CertificateParams::new(sans.to_vec())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, SERVING_COMMON_NAME);
    params.distinguished_name = name;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    // Never outlive the CA: clients that check the whole chain would reject it.
    let not_after = now.saturating_add(SERVING_LIFETIME.as_secs()).min(ca.not_after);
    set_validity(&mut params, now.saturating_sub(BACKDATE.as_secs()), not_after);
    let cert = params.signed_by(&key, &issuer)?;

    let issued = Issued {
        material: TlsMaterial {
            ca_pem: ca.cert_pem.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after: Some(not_after),
            ca_not_after: Some(ca.not_after),
        },
        ca_key_pem: ca.key_pem.clone(),
        ca_not_after: ca.not_after,
        not_after,
    };
    verify_covers(&issued.material, sans, now)?;
    Ok(issued)
}

/// rcgen takes `time::OffsetDateTime`, which this crate does not depend on; offsetting
/// rcgen's own epoch value avoids naming the type.
fn set_validity(params: &mut CertificateParams, not_before: u64, not_after: u64) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs(not_before);
    params.not_after = epoch + Duration::from_secs(not_after);
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // A positive serial, as RFC 5280 requires.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn unix_now() -> u64 {
    u64::try_from(k8s_openapi::jiff::Timestamp::now().as_second()).unwrap_or(0)
}

/// Checks that the serving certificate chains to the CA, carries a key that matches,
/// names every SAN and is still valid 30 days from `now`.
fn verify_covers(material: &TlsMaterial, sans: &[String], now: u64) -> Result<(), TlsError> {
    // Building the server config proves the key belongs to the certificate.
    server_config(material)?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(material.ca_pem.as_bytes()) {
        let ca = ca.map_err(|e| TlsError::Invalid(format!("{CA_CERT_KEY}: {e}")))?;
        roots.add(ca)?;
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| TlsError::Invalid(format!("{CA_CERT_KEY}: {e}")))?;
    let leaf = CertificateDer::from_pem_slice(material.cert_pem.as_bytes())
        .map_err(|e| TlsError::Invalid(format!("{CERT_KEY}: {e}")))?;
    let at = UnixTime::since_unix_epoch(Duration::from_secs(now.saturating_add(RENEW_BEFORE.as_secs())));
    for san in sans {
        let name = server_name_for(san)?;
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], at)
            .map_err(|e| TlsError::Invalid(format!("certificate does not serve {san} for 30 more days: {e}")))?;
    }
    Ok(())
}

/// The name a client would connect with to exercise `san`.
fn server_name_for(san: &str) -> Result<ServerName<'static>, TlsError> {
    if let Ok(ip) = san.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    // A wildcard cannot be a client's server name; a name it alone matches stands in.
    let probe = match san.strip_prefix("*.") {
        Some(rest) => format!("llm-weaver-probe.{rest}"),
        None => san.to_owned(),
    };
    ServerName::try_from(probe).map_err(|e| TlsError::Invalid(format!("SAN {san:?}: {e}")))
}

enum Assessment {
    Usable(TlsMaterial),
    Reissue { ca: CaMaterial, reason: String },
    Regenerate { reason: String },
}

fn assess(secret: &Secret, sans: &[String], now: u64) -> Assessment {
    let text = |key: &str| -> Result<String, String> {
        let bytes = secret.data.as_ref().and_then(|d| d.get(key)).ok_or_else(|| format!("{key} is missing"))?;
        String::from_utf8(bytes.0.clone()).map_err(|_| format!("{key} is not PEM text"))
    };
    let ca_pem = match text(CA_CERT_KEY) {
        Ok(pem) => pem,
        Err(reason) => return Assessment::Regenerate { reason },
    };
    let leaf_problem = match (text(CERT_KEY), text(KEY_KEY)) {
        (Ok(cert_pem), Ok(key_pem)) => {
            let material = TlsMaterial {
                ca_pem: ca_pem.clone(),
                cert_pem,
                key_pem,
                not_after: annotation(secret, NOT_AFTER_ANNOTATION),
                ca_not_after: annotation(secret, CA_NOT_AFTER_ANNOTATION),
            };
            match verify_covers(&material, sans, now) {
                Ok(()) => return Assessment::Usable(material),
                Err(error) => error.to_string(),
            }
        }
        (Err(reason), _) | (_, Err(reason)) => reason,
    };
    let ca_key_pem = match text(CA_KEY_KEY) {
        Ok(pem) => pem,
        Err(reason) => return Assessment::Regenerate { reason: format!("{leaf_problem}, and {reason}") },
    };
    let ca_not_after = annotation(secret, CA_NOT_AFTER_ANNOTATION);
    match ca_not_after {
        Some(not_after) if not_after > now.saturating_add(RENEW_BEFORE.as_secs()) => Assessment::Reissue {
            ca: CaMaterial { cert_pem: ca_pem, key_pem: ca_key_pem, not_after },
            reason: leaf_problem,
        },
        Some(_) => Assessment::Regenerate { reason: "the CA expires within 30 days".into() },
        None => Assessment::Regenerate { reason: format!("{leaf_problem}, and the CA's expiry is not recorded") },
    }
}

/// A unix time we recorded in an annotation of `secret`.
fn annotation(secret: &Secret, name: &str) -> Option<u64> {
    secret.metadata.annotations.as_ref()?.get(name)?.trim().parse::<u64>().ok()
}

fn to_secret(namespace: &str, name: &str, issued: &Issued, sans: &[String], existing: Option<Secret>) -> Secret {
    let mut secret = existing.unwrap_or_else(|| Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        ..Secret::default()
    });
    secret.type_ = Some(SECRET_TYPE.to_owned());
    secret.metadata.labels.get_or_insert_with(BTreeMap::new).insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    let annotations = secret.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(SANS_ANNOTATION.into(), sans.join(","));
    annotations.insert(NOT_AFTER_ANNOTATION.into(), issued.not_after.to_string());
    annotations.insert(CA_NOT_AFTER_ANNOTATION.into(), issued.ca_not_after.to_string());
    // stringData would be merged into data by the server; writing data alone keeps
    // what we send exactly what is stored.
    secret.string_data = None;
    let data = secret.data.get_or_insert_with(BTreeMap::new);
    let m = &issued.material;
    for (key, value) in
        [(CA_CERT_KEY, &m.ca_pem), (CA_KEY_KEY, &issued.ca_key_pem), (CERT_KEY, &m.cert_pem), (KEY_KEY, &m.key_pem)]
    {
        data.insert(key.to_owned(), ByteString(value.as_bytes().to_vec()));
    }
    secret
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

    fn sans() -> Vec<String> {
        vec!["127.0.0.1".into(), "weaver-operator.weaver-system.svc".into()]
    }

    fn client_trusting(ca_pem: &str) -> Result<TlsConnector, Box<dyn std::error::Error + Send + Sync>> {
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(ca?)?;
        }
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConnector::from(Arc::new(config)))
    }

    /// Runs a real handshake over an in-memory pipe, then echoes a few bytes; returns
    /// what came back, or the client-side handshake error.
    async fn handshake(
        server: &TlsMaterial,
        trusted_ca: &str,
        name: &str,
    ) -> Result<Result<Vec<u8>, std::io::Error>, Box<dyn std::error::Error + Send + Sync>> {
        let acceptor = TlsAcceptor::from(server_config(server)?);
        let connector = client_trusting(trusted_ca)?;
        let name = ServerName::try_from(name.to_owned())?;
        let (client_io, server_io) = tokio::io::duplex(16 * 1024);
        let server_task = tokio::spawn(async move {
            let mut stream = acceptor.accept(server_io).await?;
            let mut buf = [0u8; 5];
            stream.read_exact(&mut buf).await?;
            stream.write_all(&buf).await?;
            stream.shutdown().await?;
            Ok::<_, std::io::Error>(())
        });
        let client = async {
            let mut stream = connector.connect(name, client_io).await?;
            let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            if alpn.as_deref() != Some(&b"http/1.1"[..]) {
                return Err(std::io::Error::other(format!("ALPN {alpn:?}")));
            }
            stream.write_all(b"hello").await?;
            let mut echoed = Vec::new();
            stream.read_to_end(&mut echoed).await?;
            Ok(echoed)
        };
        let echoed = client.await;
        if echoed.is_ok() {
            server_task.await??;
        }
        Ok(echoed)
    }

    #[tokio::test]
    async fn handshake_verifies_against_the_ca_by_ip_and_dns_name() -> TestResult {
        let material = generate(&sans())?;
        assert_eq!(handshake(&material, &material.ca_pem, "127.0.0.1").await??, b"hello");
        let echoed = handshake(&material, &material.ca_pem, "weaver-operator.weaver-system.svc").await??;
        assert_eq!(echoed, b"hello");
        Ok(())
    }

    #[tokio::test]
    async fn handshake_fails_for_another_name_or_another_ca() -> TestResult {
        let material = generate(&sans())?;
        let wrong_name = handshake(&material, &material.ca_pem, "10.1.2.3").await?.err().ok_or("accepted")?;
        assert!(wrong_name.to_string().contains("not valid for name"), "{wrong_name}");
        // Both CAs share a name, so this fails on the signature rather than as an unknown issuer.
        let stranger = generate(&sans())?;
        let wrong_ca = handshake(&material, &stranger.ca_pem, "127.0.0.1").await?.err().ok_or("accepted")?;
        assert!(wrong_ca.to_string().contains("invalid peer certificate"), "{wrong_ca}");
        Ok(())
    }

    #[test]
    fn debug_output_redacts_the_key() -> TestResult {
        let material = generate(&sans())?;
        let shown = format!("{material:?}");
        assert!(shown.contains("[redacted]"));
        assert!(!shown.contains("PRIVATE KEY"));
        Ok(())
    }

    #[test]
    fn no_sans_is_an_error() {
        assert!(matches!(generate(&[]), Err(TlsError::Invalid(_))));
    }

    #[test]
    fn wildcard_sans_are_checked_by_a_probe_name() -> TestResult {
        let wanted = vec!["*.weaver-system.svc".to_owned()];
        let material = generate(&wanted)?;
        verify_covers(&material, &wanted, unix_now())?;
        assert!(verify_covers(&material, &["*.other.svc".to_owned()], unix_now()).is_err());
        Ok(())
    }

    fn stored(sans: &[String], now: u64) -> Result<Secret, TlsError> {
        Ok(to_secret("ns", "tls", &generate_at(sans, now)?, sans, None))
    }

    fn data_text(secret: &Secret, key: &str) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
        let bytes = secret.data.as_ref().and_then(|d| d.get(key)).ok_or(format!("{key} missing"))?;
        Ok(String::from_utf8(bytes.0.clone())?)
    }

    #[test]
    fn stored_secret_has_the_expected_shape() -> TestResult {
        let now = unix_now();
        let secret = stored(&sans(), now)?;
        assert_eq!(secret.type_.as_deref(), Some(SECRET_TYPE));
        let labels = secret.metadata.labels.as_ref().ok_or("no labels")?;
        assert_eq!(labels.get(MANAGED_BY_LABEL).map(String::as_str), Some(MANAGED_BY_VALUE));
        let annotations = secret.metadata.annotations.as_ref().ok_or("no annotations")?;
        let annotation = |k: &str| annotations.get(k).cloned().unwrap_or_default();
        assert_eq!(annotation(SANS_ANNOTATION), "127.0.0.1,weaver-operator.weaver-system.svc");
        assert_eq!(annotation(NOT_AFTER_ANNOTATION), (now + SERVING_LIFETIME.as_secs()).to_string());
        assert_eq!(annotation(CA_NOT_AFTER_ANNOTATION), (now + CA_LIFETIME.as_secs()).to_string());
        for key in [CA_CERT_KEY, CA_KEY_KEY, CERT_KEY, KEY_KEY] {
            assert!(data_text(&secret, key)?.starts_with("-----BEGIN "), "{key}");
        }
        Ok(())
    }

    #[test]
    fn fresh_secret_is_usable() -> TestResult {
        let now = unix_now();
        assert!(matches!(assess(&stored(&sans(), now)?, &sans(), now), Assessment::Usable(_)));
        // A subset of the SANs is still covered.
        assert!(matches!(assess(&stored(&sans(), now)?, &sans()[..1], now), Assessment::Usable(_)));
        Ok(())
    }

    #[test]
    fn a_new_san_reissues_from_the_same_ca() -> TestResult {
        let now = unix_now();
        let secret = stored(&sans(), now)?;
        let mut wanted = sans();
        wanted.push("10.96.0.20".into());
        let Assessment::Reissue { ca, .. } = assess(&secret, &wanted, now) else {
            return Err("expected a reissue".into());
        };
        let issued = reissue(&ca, &wanted, now)?;
        assert_eq!(issued.material.ca_pem, data_text(&secret, CA_CERT_KEY)?);
        let repaired = to_secret("ns", "tls", &issued, &wanted, Some(secret));
        assert!(matches!(assess(&repaired, &wanted, now), Assessment::Usable(_)));
        Ok(())
    }

    #[test]
    fn a_nearly_expired_certificate_is_reissued_and_an_expiring_ca_regenerated() -> TestResult {
        let issued_at = unix_now() - 340 * 24 * 3600;
        let secret = stored(&sans(), issued_at)?;
        let now = unix_now();
        assert!(matches!(assess(&secret, &sans(), now), Assessment::Reissue { .. }));
        let late = issued_at + CA_LIFETIME.as_secs() - 10 * 24 * 3600;
        assert!(matches!(assess(&secret, &sans(), late), Assessment::Regenerate { .. }));
        Ok(())
    }

    #[test]
    fn reissued_certificate_never_outlives_its_ca() -> TestResult {
        let now = unix_now();
        let secret = stored(&sans(), now)?;
        let ca = CaMaterial {
            cert_pem: data_text(&secret, CA_CERT_KEY)?,
            key_pem: data_text(&secret, CA_KEY_KEY)?,
            not_after: now + 60 * 24 * 3600,
        };
        let issued = reissue(&ca, &sans(), now)?;
        assert_eq!(issued.not_after, ca.not_after);
        Ok(())
    }

    #[test]
    fn a_mismatched_key_is_not_usable() -> TestResult {
        let now = unix_now();
        let mut secret = stored(&sans(), now)?;
        let other = generate(&sans())?;
        secret.data.get_or_insert_default().insert(KEY_KEY.into(), ByteString(other.key_pem.into_bytes()));
        assert!(matches!(assess(&secret, &sans(), now), Assessment::Reissue { .. }));
        Ok(())
    }

    #[test]
    fn missing_ca_regenerates() -> TestResult {
        let now = unix_now();
        let mut secret = stored(&sans(), now)?;
        secret.data.get_or_insert_default().remove(CA_CERT_KEY);
        assert!(matches!(assess(&secret, &sans(), now), Assessment::Regenerate { .. }));
        let mut secret = stored(&sans(), now)?;
        let data = secret.data.get_or_insert_default();
        data.remove(CERT_KEY);
        data.remove(CA_KEY_KEY);
        assert!(matches!(assess(&secret, &sans(), now), Assessment::Regenerate { .. }));
        Ok(())
    }
}
