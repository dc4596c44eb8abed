//! Loading a rustls server configuration from PEM files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;

/// A TLS file could not be used; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read or held no usable PEM item.
    #[error("TLS file {path}: {reason}")]
    File {
        /// The offending file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// rustls refused the certificate/key pair.
    #[error("TLS certificate {certificate} and key {key} do not form a valid pair: {source}")]
    Config {
        /// The certificate file.
        certificate: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },
}

fn file_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File { path: path.to_owned(), reason: reason.to_string() }
}

fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    std::fs::metadata(path).map_err(|e| file_error(path, e))?;
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate found"));
    }
    Ok(certs)
}

/// Builds the rustls configuration for `files`: TLS 1.2 and 1.3 with the ring provider,
/// no client authentication.
pub(crate) fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut chain = load_certificates(&files.certificate)?;
    if let Some(root) = &files.root_certificate {
        for cert in load_certificates(root)? {
            if !chain.contains(&cert) {
                chain.push(cert);
            }
        }
    }
    std::fs::metadata(&files.private_key).map_err(|e| file_error(&files.private_key, e))?;
    let key = PrivateKeyDer::from_pem_file(&files.private_key).map_err(|e| file_error(&files.private_key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::Config {
            certificate: files.certificate.clone(),
            key: files.private_key.clone(),
            source,
        })?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Config {
            certificate: files.certificate.clone(),
            key: files.private_key.clone(),
            source,
        })?;
    Ok(Arc::new(config))
}
