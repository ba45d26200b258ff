//! TLS: loading certificates and keys from PEM files into rustls configurations,
//! for both sides of the proxy.
//!
//! - Listeners ([`ListenerTls`]): a certificate chain and key per certificate,
//!   chosen by the client's SNI ([`SniResolver`]: the first certificate valid for
//!   the name, else the first one), ALPN `h2` and `http/1.1`, TLS 1.2 and 1.3 with
//!   a configurable minimum. The live `ServerConfig` sits behind an `ArcSwap`:
//!   [`TlsReloader::reload`] reads the files again and swaps in a new one, which
//!   only new handshakes see; open connections keep the one they started with.
//! - Upstreams ([`TlsClient`]): one rustls `ClientConfig` per upstream, built once,
//!   so its session cache lets pooled and new connections resume sessions.
//!   Verification is against the `webpki-roots` web roots (compiled in, so a host
//!   without a CA bundle, such as a slim container, behaves the same as any other)
//!   or a CA file (`tls_ca`), or off (`tls_verify = false`, logged at start-up).
//!
//! Everything here uses the `ring` provider explicitly, so no process-wide default
//! has to be installed.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, InvalidDnsNameError, PrivateKeyDer, ServerName, UnixTime};
use tracing::{info, warn};

use crate::config::{self, Scheme, TlsVersion, UpstreamProtocol, UpstreamTls};

/// Why a certificate, a key or a TLS configuration could not be loaded or built.
/// The files are named in the message: operators read it in the log, in the
/// admin API's answer to a reload, and at start-up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {}: {source}", path.display())]
    ReadCerts { path: PathBuf, source: pem::Error },
    #[error("bad certificate PEM in {}: {source}", path.display())]
    CertPem { path: PathBuf, source: pem::Error },
    #[error("no certificate in {}", path.display())]
    NoCertInFile { path: PathBuf },
    #[error("cannot read a private key from {}: {source}", path.display())]
    ReadKey { path: PathBuf, source: pem::Error },
    /// The key parsed but the provider cannot sign with it.
    #[error("unusable private key {}: {source}", path.display())]
    UnusableKey {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{} and {} do not belong together: {source}", cert.display(), key.display())]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("no certificate configured")]
    NoCertificates,
    #[error("TLS versions: {0}")]
    Versions(#[source] rustls::Error),
    #[error("bad CA certificate in {}: {source}", path.display())]
    CaCert {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("client certificate {}: {source}", path.display())]
    ClientCert {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{host:?} cannot be a TLS server name: {source}")]
    ServerName {
        host: String,
        source: InvalidDnsNameError,
    },
}

/// One listener whose certificates could not be reloaded.
#[derive(Debug, thiserror::Error)]
#[error("listener {listen}: {source}")]
pub struct ListenerReloadError {
    pub listen: SocketAddr,
    pub source: TlsError,
}

/// Every listener a reload failed for (the others took their new files).
#[derive(Debug)]
pub struct TlsReloadError {
    pub failures: Vec<ListenerReloadError>,
}

impl fmt::Display for TlsReloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, failure) in self.failures.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{failure}")?;
        }
        Ok(())
    }
}

// No single source: each failure is a whole error of its own, all in the message.
impl std::error::Error for TlsReloadError {}

/// The crypto provider every configuration here is built with.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate of a PEM file, in order (leaf first for a chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|source| TlsError::ReadCerts {
            path: path.to_path_buf(),
            source,
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::CertPem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertInFile {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::ReadKey {
        path: path.to_path_buf(),
        source,
    })
}

fn versions(min: TlsVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static BOTH: [&rustls::SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    static ONLY_13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match min {
        TlsVersion::V1_2 => &BOTH,
        TlsVersion::V1_3 => &ONLY_13,
    }
}

/// One loaded certificate: its key for rustls, its leaf for name matching.
struct Loaded {
    key: Arc<CertifiedKey>,
    leaf: CertificateDer<'static>,
}

/// Chooses a listener's certificate by SNI: the first that is valid for the
/// requested name, else the first of all (also when the client sent no SNI).
pub struct SniResolver {
    certs: Vec<Loaded>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("certificates", &self.certs.len())
            .finish()
    }
}

impl SniResolver {
    fn valid_for(leaf: &CertificateDer<'_>, name: &str) -> bool {
        let Ok(name) = ServerName::try_from(name) else {
            return false;
        };
        webpki::EndEntityCert::try_from(leaf)
            .is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello
            .server_name()
            .and_then(|name| self.certs.iter().find(|c| Self::valid_for(&c.leaf, name)));
        chosen.or(self.certs.first()).map(|c| Arc::clone(&c.key))
    }
}

/// Builds a listener's server configuration from its files.
pub fn server_config(tls: &config::ListenerTls) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let mut certs = Vec::new();
    for pair in &tls.certificates {
        let chain = load_certs(&pair.cert)?;
        let key = load_key(&pair.key)?;
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|source| TlsError::UnusableKey {
                path: pair.key.clone(),
                source,
            })?;
        let leaf = chain[0].clone();
        let certified = CertifiedKey::new(chain, signing);
        certified
            .keys_match()
            .map_err(|source| TlsError::KeyMismatch {
                cert: pair.cert.clone(),
                key: pair.key.clone(),
                source,
            })?;
        certs.push(Loaded {
            key: Arc::new(certified),
            leaf,
        });
    }
    if certs.is_empty() {
        return Err(TlsError::NoCertificates);
    }
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(tls.min_version))
        .map_err(TlsError::Versions)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { certs }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A TLS listener's live configuration and where it came from.
pub struct ListenerTls {
    pub listen: std::net::SocketAddr,
    source: config::ListenerTls,
    current: ArcSwap<ServerConfig>,
}

impl fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerTls")
            .field("listen", &self.listen)
            .finish()
    }
}

impl ListenerTls {
    pub fn new(
        listen: std::net::SocketAddr,
        source: &config::ListenerTls,
    ) -> Result<ListenerTls, TlsError> {
        Ok(ListenerTls {
            listen,
            source: source.clone(),
            current: ArcSwap::from_pointee(server_config(source)?),
        })
    }

    /// The configuration new handshakes use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Reads the files again; on any problem the old configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = server_config(&self.source)?;
        self.current.store(Arc::new(fresh));
        Ok(())
    }
}

/// Every TLS listener of the process, for `SIGHUP` and `POST /api/v1/tls/reload`.
#[derive(Debug, Clone, Default)]
pub struct TlsReloader {
    /// Swapped by a configuration reload ([`TlsReloader::set`]).
    listeners: Arc<ArcSwap<Vec<Arc<ListenerTls>>>>,
}

impl TlsReloader {
    pub fn new(listeners: Vec<Arc<ListenerTls>>) -> TlsReloader {
        TlsReloader {
            listeners: Arc::new(ArcSwap::from_pointee(listeners)),
        }
    }

    /// Replaces the listeners (after a configuration reload).
    pub fn set(&self, listeners: Vec<Arc<ListenerTls>>) {
        self.listeners.store(Arc::new(listeners));
    }

    pub fn len(&self) -> usize {
        self.listeners.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.listeners.load().is_empty()
    }

    /// Reloads every listener's certificates; returns how many were reloaded, or
    /// every failure (those listeners keep serving their old certificates).
    pub fn reload(&self) -> Result<usize, TlsReloadError> {
        let mut failures = Vec::new();
        let listeners = self.listeners.load_full();
        for l in listeners.iter() {
            match l.reload() {
                Ok(()) => info!(listen = %l.listen, "TLS certificates reloaded"),
                Err(source) => {
                    warn!(listen = %l.listen, error = %source, "TLS reload failed; the old certificates stay");
                    failures.push(ListenerReloadError {
                        listen: l.listen,
                        source,
                    });
                }
            }
        }
        if failures.is_empty() {
            Ok(listeners.len())
        } else {
            Err(TlsReloadError { failures })
        }
    }
}

/// Accepts any server certificate: `tls_verify = false`. Signatures are still
/// checked, so the handshake itself stays sound.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client configuration for an upstream's servers, offering `alpn`.
pub fn client_config(tls: &UpstreamTls, alpn: &[&[u8]]) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Versions)?;
    let builder = if !tls.verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    } else {
        let mut roots = RootCertStore::empty();
        match &tls.ca {
            Some(path) => {
                for cert in load_certs(path)? {
                    roots.add(cert).map_err(|source| TlsError::CaCert {
                        path: path.clone(),
                        source,
                    })?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|source| TlsError::ClientCert {
                path: cert.clone(),
                source,
            })?,
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// An upstream's TLS client configurations, built once from its settings: one for
/// traffic (ALPN as its `protocol` asks) and one for `https` health checks
/// (HTTP/1.1 only). Compared by identity: two are equal only if they are the same.
#[derive(Clone)]
pub struct TlsClient {
    pub proxy: Arc<ClientConfig>,
    pub check: Arc<ClientConfig>,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("alpn", &self.proxy.alpn_protocols)
            .finish()
    }
}

impl PartialEq for TlsClient {
    fn eq(&self, other: &TlsClient) -> bool {
        Arc::ptr_eq(&self.proxy, &other.proxy) && Arc::ptr_eq(&self.check, &other.check)
    }
}

impl TlsClient {
    /// Loads the files `tls` names; `upstream` names it in the warning that
    /// `tls_verify = false` gives.
    pub fn build(
        upstream: &str,
        scheme: Scheme,
        protocol: UpstreamProtocol,
        tls: &UpstreamTls,
    ) -> Result<TlsClient, TlsError> {
        if !tls.verify {
            warn!(
                %upstream,
                "tls_verify = false: server certificates are NOT verified for this upstream"
            );
        }
        let alpn: &[&[u8]] = match (scheme, protocol) {
            (Scheme::Https, UpstreamProtocol::H2) => &[b"h2", b"http/1.1"],
            _ => &[b"http/1.1"],
        };
        Ok(TlsClient {
            proxy: Arc::new(client_config(tls, alpn)?),
            check: Arc::new(client_config(tls, &[b"http/1.1"])?),
        })
    }
}

/// The name sent as SNI and verified: `tls_server_name`, else the host of the
/// server's `host:port` address.
pub fn server_name(tls: &UpstreamTls, addr: &str) -> Result<ServerName<'static>, TlsError> {
    let host = match &tls.server_name {
        Some(n) => n.as_str(),
        None => match addr.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(rest),
            None => addr.rsplit_once(':').map_or(addr, |(h, _)| h),
        },
    };
    ServerName::try_from(host.to_string()).map_err(|source| TlsError::ServerName {
        host: host.to_string(),
        source,
    })
}
