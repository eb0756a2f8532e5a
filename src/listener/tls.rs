//! mTLS on the listeners (rustls, aws-lc-rs): the server certificate, client
//! certificates verified against a CA, and an allow-list of client identities (URI
//! SANs such as SPIFFE IDs, or DNS SANs). With it, "only Envoy may reach hopwarden"
//! is enforced here rather than hoped for of the network.
//!
//! The files are re-read every `reload_interval` (polling, so Kubernetes Secret
//! symlink swaps and cert-manager renewals are seen like any edit); a change that
//! does not load is logged at WARN and the last good certificates stay in use.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tokio_rustls::TlsAcceptor;

use super::spec::TlsSpec;
use super::Protocol;

/// Why the TLS settings did not load.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A file holds no usable PEM item of the kind needed.
    #[error("{path}: no {what} in it")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was looked for.
        what: &'static str,
    },
    /// The CA, certificate or key was refused by rustls.
    #[error("{what}: {error}")]
    Rustls {
        /// Which part.
        what: &'static str,
        /// rustls's reason.
        error: rustls::Error,
    },
    /// The client verifier could not be built from the CA file.
    #[error("client_ca {path}: {message}")]
    Verifier {
        /// The CA file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// The listeners' TLS, swapped whole when the files change.
pub struct Tls {
    spec: TlsSpec,
    current: ArcSwap<Configs>,
    /// The files' bytes as last loaded (or last refused), to notice a change.
    seen: std::sync::Mutex<Vec<Vec<u8>>>,
}

/// One rustls config per protocol: they differ only in their ALPN list.
struct Configs {
    http2: Arc<ServerConfig>,
    auto: Arc<ServerConfig>,
    http1: Arc<ServerConfig>,
}

impl Tls {
    /// Loads the files `spec` names; fails if they do not make a working config.
    pub fn load(spec: &TlsSpec) -> Result<Arc<Tls>, TlsError> {
        let files = read_files(spec)?;
        let configs = build(spec, &files)?;
        Ok(Arc::new(Tls {
            spec: spec.clone(),
            current: ArcSwap::from_pointee(configs),
            seen: std::sync::Mutex::new(files),
        }))
    }

    /// The acceptor for a listener speaking `protocol`, with the current certificates.
    pub fn acceptor(&self, protocol: Protocol) -> TlsAcceptor {
        let configs = self.current.load();
        TlsAcceptor::from(match protocol {
            Protocol::Http2 => configs.http2.clone(),
            Protocol::Auto => configs.auto.clone(),
            Protocol::Http1 => configs.http1.clone(),
        })
    }

    /// Re-reads the files; loads them if they changed. A change that does not load
    /// keeps the last good config (logged once per distinct bad content).
    pub fn reload(&self) {
        let files = match read_files(&self.spec) {
            Ok(files) => files,
            Err(e) => {
                tracing::warn!(error = %e, "TLS files not re-read; keeping the last good certificates");
                return;
            }
        };
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == files {
            return;
        }
        match build(&self.spec, &files) {
            Ok(configs) => {
                self.current.store(Arc::new(configs));
                tracing::info!(cert = %self.spec.cert.display(), "TLS certificates reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "new TLS files do not load; keeping the last good certificates");
            }
        }
        *seen = files;
    }

    /// Reloads every `reload_interval`, for as long as the task runs.
    pub async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.spec.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let tls = self.clone();
            // Small files, but file reads block: off the serving threads.
            let _ = tokio::task::spawn_blocking(move || tls.reload()).await;
        }
    }
}

fn read_files(spec: &TlsSpec) -> Result<Vec<Vec<u8>>, TlsError> {
    [&spec.cert, &spec.key, &spec.client_ca]
        .into_iter()
        .map(|path| {
            std::fs::read(path).map_err(|error| TlsError::Read {
                path: path.clone(),
                error,
            })
        })
        .collect()
}

fn build(spec: &TlsSpec, files: &[Vec<u8>]) -> Result<Configs, TlsError> {
    let [cert, key, ca] = files else {
        unreachable!("read_files reads three files")
    };
    let chain = certificates(cert, &spec.cert)?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|_| TlsError::Pem {
        path: spec.key.clone(),
        what: "private key",
    })?;
    let mut roots = RootCertStore::empty();
    for ca_cert in certificates(ca, &spec.client_ca)? {
        roots.add(ca_cert).map_err(|error| TlsError::Rustls {
            what: "client_ca",
            error,
        })?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier {
            path: spec.client_ca.clone(),
            message: e.to_string(),
        })?;
    let verifier = Arc::new(AllowList {
        inner: webpki,
        spiffe_ids: spec.allowed_spiffe_ids.clone(),
        dns_names: spec.allowed_dns_names.clone(),
    });
    let config = |alpn: &[&[u8]]| -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::Rustls {
                what: "protocol versions",
                error,
            })?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|error| TlsError::Rustls {
                what: "cert and key",
                error,
            })?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    };
    Ok(Configs {
        http2: config(&[b"h2"])?,
        auto: config(&[b"h2", b"http/1.1"])?,
        http1: config(&[b"http/1.1"])?,
    })
}

fn certificates(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::Pem {
            path: path.to_path_buf(),
            what: "certificate",
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// The CA's verdict, then the allow-list: a certificate the CA signed for some other
/// workload (in a mesh CA, any workload) is refused in the handshake.
#[derive(Debug)]
struct AllowList {
    inner: Arc<dyn ClientCertVerifier>,
    spiffe_ids: Vec<String>,
    dns_names: Vec<String>,
}

impl AllowList {
    fn allows(&self, cert: &webpki::EndEntityCert<'_>) -> bool {
        cert.valid_uri_names()
            .any(|uri| self.spiffe_ids.iter().any(|id| id == uri))
            || cert.valid_dns_names().any(|name| {
                self.dns_names
                    .iter()
                    .any(|allowed| allowed.eq_ignore_ascii_case(name))
            })
    }
}

impl ClientCertVerifier for AllowList {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if self.allows(&cert) {
            return Ok(ClientCertVerified::assertion());
        }
        // Only certificates the CA signed get here, so this cannot be flooded by
        // strangers; the identities are names, not secrets.
        let uris: Vec<&str> = cert.valid_uri_names().take(4).collect();
        let dns: Vec<&str> = cert.valid_dns_names().take(4).collect();
        tracing::warn!(
            ?uris,
            ?dns,
            "client certificate not in the allow-list; refused"
        );
        Err(rustls::Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
