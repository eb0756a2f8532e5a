//! `hopwarden dev certs DIR`: a development CA and one certificate per workload, for the
//! Envoy sidecars' mTLS (envoy/*-sidecar.yaml), the local stack and the tests.
//!
//! Each workload certificate is an X.509-SVID: its one URI SAN is
//! `spiffe://hopwarden.local/ns/<namespace>/sa/<name>`, which Envoy reports to hopwarden
//! as `attributes.source.principal`. It also names `DNS:<name>`, `DNS:localhost` and
//! `IP:127.0.0.1`, so the same certificate serves as the sidecar's server certificate.
//! Keys are ECDSA P-256 in PKCS#8 PEM (what Envoy's BoringSSL reads), signed with aws-lc-rs.
//!
//! Files: `ca.pem`, `ca-key.pem`, `<name>.pem`, `<name>-key.pem`. Existing files are kept
//! while they stay valid for more than a day and still match their key and the CA, so the
//! command can run before every start; `--force` makes everything anew.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// The SPIFFE trust domain of every development identity.
pub const TRUST_DOMAIN: &str = "hopwarden.local";

/// The workloads of the local stack: `NAME` or `NAME:NAMESPACE`.
pub const DEFAULT_WORKLOADS: [&str; 5] = [
    "payments",
    "ledger",
    "email",
    "reconciler:ledger",
    "gateway",
];

/// A certificate that expires sooner than this is made anew.
const MIN_REMAINING: Duration = Duration::days(1);

/// `hopwarden dev certs` arguments.
#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    /// Where to write ca.pem, ca-key.pem, NAME.pem and NAME-key.pem (created if missing).
    pub dir: PathBuf,
    /// Workloads as NAME or NAME:NAMESPACE (the namespace defaults to the name);
    /// default: payments ledger email reconciler:ledger gateway.
    pub workloads: Vec<Workload>,
    /// How long new certificates are valid, in days.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(2..=3650))]
    pub days: u32,
    /// Make a new CA and new certificates even where valid ones exist.
    #[arg(long)]
    pub force: bool,
}

/// One workload identity: `spiffe://hopwarden.local/ns/<namespace>/sa/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// The service account name: also the file name and a DNS SAN.
    pub name: String,
    /// The namespace in the SPIFFE ID.
    pub namespace: String,
}

impl Workload {
    /// The workload's SPIFFE ID.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{TRUST_DOMAIN}/ns/{}/sa/{}",
            self.namespace, self.name
        )
    }
}

impl FromStr for Workload {
    type Err = CertsError;

    /// `NAME` or `NAME:NAMESPACE`, each a DNS label (the name becomes a file name and a
    /// DNS SAN, so nothing else may pass).
    fn from_str(s: &str) -> Result<Workload, CertsError> {
        let (name, namespace) = s.split_once(':').unwrap_or((s, s));
        let label = |l: &str| {
            (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !label(name) || !label(namespace) {
            return Err(CertsError::Workload(s.to_string()));
        }
        Ok(Workload {
            name: name.to_string(),
            namespace: namespace.to_string(),
        })
    }
}

/// Why certificates could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// A workload argument that is not `NAME` or `NAME:NAMESPACE`.
    #[error(
        "invalid workload {0:?}: expected NAME or NAME:NAMESPACE, each a DNS label (a-z, 0-9, '-')"
    )]
    Workload(String),
    /// A file or directory that could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// Key generation or signing failed.
    #[error("cannot make the certificate for {name:?}: {source}")]
    Generate {
        /// The workload, or "ca".
        name: String,
        /// What rcgen said.
        source: rcgen::Error,
    },
}

/// One certificate the command left in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The certificate file.
    pub cert: PathBuf,
    /// The identity in its URI SAN.
    pub id: String,
    /// Whether an existing, still valid certificate was kept.
    pub kept: bool,
}

/// `hopwarden dev certs`: prints one line per certificate, `PATH  ID`.
pub fn run(args: &CertsArgs) -> ExitCode {
    let workloads = if args.workloads.is_empty() {
        default_workloads()
    } else {
        args.workloads.clone()
    };
    match ensure(&args.dir, &workloads, args.days, args.force) {
        Ok(written) => {
            for w in written {
                let kept = if w.kept { "  (kept)" } else { "" };
                println!("{}  {}{kept}", w.cert.display(), w.id);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The local stack's workloads.
pub fn default_workloads() -> Vec<Workload> {
    DEFAULT_WORKLOADS
        .iter()
        .map(|w| w.parse().expect("default workloads are valid"))
        .collect()
}

/// Makes sure `dir` holds a valid CA and a valid certificate for each workload, keeping
/// what is still good unless `force`. The CA comes first in the answer.
pub fn ensure(
    dir: &Path,
    workloads: &[Workload],
    days: u32,
    force: bool,
) -> Result<Vec<Written>, CertsError> {
    std::fs::create_dir_all(dir).map_err(|source| CertsError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let ca_cert = dir.join("ca.pem");
    let ca_key = dir.join("ca-key.pem");
    let existing = if force {
        None
    } else {
        load_ca(&ca_cert, &ca_key)
    };
    let ca_kept = existing.is_some();
    let (issuer, ca_der) = match existing {
        Some(ca) => ca,
        None => {
            let (issuer, pem, der) = new_ca(days).map_err(|source| CertsError::Generate {
                name: "ca".into(),
                source,
            })?;
            // The CA key is read by nothing but this command: owner only.
            write(&ca_key, &issuer.key().serialize_pem(), 0o600)?;
            write(&ca_cert, &pem, 0o644)?;
            (issuer, der)
        }
    };
    let mut written = vec![Written {
        cert: ca_cert,
        id: format!("spiffe://{TRUST_DOMAIN}"),
        kept: ca_kept,
    }];
    for w in workloads {
        let cert = dir.join(format!("{}.pem", w.name));
        let key = dir.join(format!("{}-key.pem", w.name));
        let kept = !force && leaf_is_current(&cert, &key, &w.spiffe_id(), &ca_der);
        if !kept {
            let (pem, key_pem) =
                new_leaf(w, &issuer, days).map_err(|source| CertsError::Generate {
                    name: w.name.clone(),
                    source,
                })?;
            // Envoy runs as a non-root user in its image and reads the key through a
            // bind mount: a development key, readable by all.
            write(&key, &key_pem, 0o644)?;
            write(&cert, &pem, 0o644)?;
        }
        written.push(Written {
            cert,
            id: w.spiffe_id(),
            kept,
        });
    }
    Ok(written)
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "hopwarden dev");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    // A minute back: a container whose clock lags the host's must not see it as future.
    params.not_before = now - Duration::minutes(1);
    params.not_after = now + Duration::days(i64::from(days));
}

/// A new self-signed CA: its issuer, its PEM and its DER.
fn new_ca(days: u32) -> Result<(Issuer<'static, KeyPair>, String, Vec<u8>), rcgen::Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name("hopwarden dev CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![SanType::URI(format!("spiffe://{TRUST_DOMAIN}").try_into()?)];
    validity(&mut params, days);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let (pem, der) = (cert.pem(), cert.der().to_vec());
    Ok((Issuer::new(params, key), pem, der))
}

/// A new workload certificate and key, both PEM.
fn new_leaf(
    w: &Workload,
    issuer: &Issuer<'_, KeyPair>,
    days: u32,
) -> Result<(String, String), rcgen::Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(&w.name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.subject_alt_names = vec![
        SanType::URI(w.spiffe_id().try_into()?),
        SanType::DnsName(w.name.clone().try_into()?),
        SanType::DnsName("localhost".try_into()?),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The existing CA, if its files parse, match, and it stays valid long enough.
fn load_ca(cert: &Path, key: &Path) -> Option<(Issuer<'static, KeyPair>, Vec<u8>)> {
    let key = KeyPair::from_pem(&std::fs::read_to_string(key).ok()?).ok()?;
    let der = pem_der(cert)?;
    let (_, parsed) = X509Certificate::from_der(&der).ok()?;
    if !parsed.is_ca()
        || !current(&parsed)
        || parsed.public_key().raw != key.subject_public_key_info()
    {
        return None;
    }
    let issuer = Issuer::from_ca_cert_der(&der.clone().into(), key).ok()?;
    Some((issuer, der))
}

/// Whether a workload's files hold a certificate for `id`, signed by this CA, matching
/// its key and valid long enough.
fn leaf_is_current(cert: &Path, key: &Path, id: &str, ca_der: &[u8]) -> bool {
    let check = || -> Option<bool> {
        let key = KeyPair::from_pem(&std::fs::read_to_string(key).ok()?).ok()?;
        let der = pem_der(cert)?;
        let (_, leaf) = X509Certificate::from_der(&der).ok()?;
        let (_, ca) = X509Certificate::from_der(ca_der).ok()?;
        let uris: Vec<&str> = leaf
            .subject_alternative_name()
            .ok()??
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect();
        Some(
            uris == [id]
                && current(&leaf)
                && leaf.public_key().raw == key.subject_public_key_info()
                && leaf.verify_signature(Some(ca.public_key())).is_ok(),
        )
    };
    check().unwrap_or(false)
}

fn current(cert: &X509Certificate<'_>) -> bool {
    let now = OffsetDateTime::now_utc();
    let validity = cert.validity();
    validity.not_before.to_datetime() <= now
        && validity.not_after.to_datetime() > now + MIN_REMAINING
}

fn pem_der(path: &Path) -> Option<Vec<u8>> {
    let text = std::fs::read(path).ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text).ok()?;
    (pem.label == "CERTIFICATE").then_some(pem.contents)
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write(path: &Path, contents: &str, mode: u32) -> Result<(), CertsError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source| CertsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("pem.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    // The umask may have narrowed the mode given at creation.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
#[path = "certs_tests.rs"]
mod tests;
