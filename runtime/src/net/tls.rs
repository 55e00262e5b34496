//! TLS with rustls (ring as the crypto provider; no OpenSSL): the acceptor of a listener
//! that serves over TLS (MQTTS), from the PEM certificate chain and private key of `tls.*`.

use std::sync::Arc;

use anyhow::Context;
use futures_rustls::TlsAcceptor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::app::settings::TlsFiles;

/// The acceptor of `files`' certificate chain and key; refuses files it cannot read or use.
pub fn acceptor(files: &TlsFiles) -> anyhow::Result<TlsAcceptor> {
    let chain = CertificateDer::pem_file_iter(&files.certificate)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("tls.certificate {}", files.certificate.display()))?;
    if chain.is_empty() {
        anyhow::bail!(
            "tls.certificate {}: no certificate in it",
            files.certificate.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(&files.private_key)
        .with_context(|| format!("tls.privateKey {}", files.private_key.display()))?;
    // ring, which the HTTP client's rustls builds already; rustls deprecates its provider for
    // lacking post-quantum key exchange, which aws-lc-rs has at the price of a C build.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("tls: the certificate and the private key do not go together")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
