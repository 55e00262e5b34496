//! TLS with rustls (ring as the crypto provider; no OpenSSL): the certificates of `tls`, picked
//! by the name a client asks for (SNI) and reloaded when their files change, and the acceptor of
//! each listener served over TLS, asking for client certificates where `mtls` says so.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use futures_rustls::TlsAcceptor;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

use crate::app::settings::{Mtls, TlsFiles};

/// How often the certificate files are looked at for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// The server's certificates, by the names they serve.
pub struct Certs {
    files: Vec<TlsFiles>,
    provider: Arc<CryptoProvider>,
    loaded: RwLock<Loaded>,
}

struct Loaded {
    /// Exact names (lower case), and the suffixes of wildcard names (`.example.com`).
    names: HashMap<String, Arc<CertifiedKey>>,
    wildcards: Vec<(String, Arc<CertifiedKey>)>,
    /// The first certificate: for a client that names no server, or one no certificate serves.
    default: Arc<CertifiedKey>,
    /// What the files looked like when read (modification time and length, each file).
    stamps: Vec<Option<(SystemTime, u64)>>,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs").field("files", &self.files).finish()
    }
}

fn provider() -> Arc<CryptoProvider> {
    // ring, which the HTTP client's rustls builds already; rustls deprecates its provider for
    // lacking post-quantum key exchange, which aws-lc-rs has at the price of a C build.
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Certs {
    /// Reads every certificate of `files`; refuses one it cannot read or use.
    pub fn load(files: &[TlsFiles]) -> anyhow::Result<Arc<Certs>> {
        let provider = provider();
        let loaded = read(files, &provider)?;
        Ok(Arc::new(Certs {
            files: files.to_vec(),
            provider,
            loaded: RwLock::new(loaded),
        }))
    }

    /// Reads the files again if any changed since; keeps the certificates in use (and says
    /// why) if the new ones cannot be used.
    pub fn refresh(&self) {
        let now = stamps(&self.files);
        if self.loaded.read().is_ok_and(|l| l.stamps == now) {
            return;
        }
        match read(&self.files, &self.provider) {
            Ok(fresh) => {
                tracing::info!("tls: certificates reloaded");
                if let Ok(mut l) = self.loaded.write() {
                    *l = fresh;
                }
            }
            Err(e) => {
                tracing::warn!("tls: the changed certificates are not used: {e:#}");
                if let Ok(mut l) = self.loaded.write() {
                    l.stamps = now;
                }
            }
        }
    }

    /// Looks at the files every [`RELOAD_EVERY`] for as long as the process runs.
    pub fn watch(self: &Arc<Self>) -> std::io::Result<()> {
        let certs = self.clone();
        std::thread::Builder::new()
            .name("tls-reload".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(RELOAD_EVERY);
                    certs.refresh();
                }
            })
            .map(drop)
    }

    /// The authorities whose certificates clients may present.
    fn authorities(&self) -> anyhow::Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        for f in &self.files {
            let Some(ca) = &f.certificate_authority else {
                continue;
            };
            for cert in pem_chain(ca, "tls.certificateAuthority")? {
                roots
                    .add(cert)
                    .with_context(|| format!("tls.certificateAuthority {}", ca.display()))?;
            }
        }
        Ok(roots)
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let l = self.loaded.read().ok()?;
        let Some(name) = hello.server_name().map(str::to_ascii_lowercase) else {
            return Some(l.default.clone());
        };
        if let Some(c) = l.names.get(&name) {
            return Some(c.clone());
        }
        let wildcard = name
            .find('.')
            .and_then(|dot| l.wildcards.iter().find(|(s, _)| *s == name[dot..]));
        Some(wildcard.map_or(&l.default, |(_, c)| c).clone())
    }
}

/// The modification time and length of each certificate and key file.
fn stamps(files: &[TlsFiles]) -> Vec<Option<(SystemTime, u64)>> {
    let stamp = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    files
        .iter()
        .flat_map(|f| [stamp(&f.certificate), stamp(&f.private_key)])
        .collect()
}

fn pem_chain(path: &Path, key: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("{key} {}", path.display()))?;
    if chain.is_empty() {
        anyhow::bail!("{key} {}: no certificate in it", path.display());
    }
    Ok(chain)
}

fn read(files: &[TlsFiles], provider: &CryptoProvider) -> anyhow::Result<Loaded> {
    let stamps = stamps(files);
    let mut names = HashMap::new();
    let mut wildcards = Vec::new();
    let mut default = None;
    for f in files {
        let chain = pem_chain(&f.certificate, "tls.certificate")?;
        let served = served_names(&chain[0])
            .with_context(|| format!("tls.certificate {}", f.certificate.display()))?;
        let key = PrivateKeyDer::from_pem_file(&f.private_key)
            .with_context(|| format!("tls.privateKey {}", f.private_key.display()))?;
        let certified = CertifiedKey::from_der(chain, key, provider).with_context(|| {
            format!(
                "tls: {} and {} do not go together",
                f.certificate.display(),
                f.private_key.display()
            )
        })?;
        let certified = Arc::new(certified);
        for name in served {
            match name.strip_prefix('*') {
                Some(suffix) => wildcards.push((suffix.to_owned(), certified.clone())),
                // The first certificate to serve a name keeps it.
                None => {
                    names.entry(name).or_insert_with(|| certified.clone());
                }
            }
        }
        default.get_or_insert(certified);
    }
    Ok(Loaded {
        names,
        wildcards,
        default: default.context("tls: no certificate")?,
        stamps,
    })
}

/// The names a certificate serves: its DNS subject alternative names, else its Common Name.
fn served_names(cert: &CertificateDer<'_>) -> anyhow::Result<Vec<String>> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    let mut names: Vec<String> = match parsed.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(common_name(&parsed).map(|n| n.to_ascii_lowercase()));
    }
    Ok(names)
}

fn common_name(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    cert.subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()
        .map(str::to_owned)
}

/// The acceptor of a listener serving `certs`; with `mtls`, it asks clients for a certificate
/// issued by `tls.certificateAuthority` (and refuses those without one when it is required).
pub fn acceptor(certs: &Arc<Certs>, mtls: Option<Mtls>) -> anyhow::Result<TlsAcceptor> {
    let builder = ServerConfig::builder_with_provider(certs.provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match mtls {
        None => builder.with_no_client_auth(),
        Some(m) => {
            let roots = certs.authorities()?;
            if roots.is_empty() {
                anyhow::bail!("mtls needs tls.certificateAuthority");
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                certs.provider.clone(),
            );
            let verifier = if m.required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(verifier.build().context("mtls")?)
        }
    };
    let config = builder.with_cert_resolver(certs.clone());
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The user a verified client certificate names (its subject's Common Name), when the listener
/// takes certificates as users.
pub fn certificate_user(conn: &rustls::ServerConnection, mtls: Option<Mtls>) -> Option<String> {
    if !mtls?.names_user {
        return None;
    }
    let cert = conn.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    common_name(&parsed)
}
