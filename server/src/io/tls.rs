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

/// The rustls side of one wss connection: ciphertext in, plaintext out, and back.
///
/// Boxed in the driver's per-connection state: a session is kilobytes, and most
/// connections are plain.
pub(crate) struct TlsState {
    session: rustls::ServerConnection,
    /// Ciphertext waiting to be written (whole TLS records), and how much of it was.
    pub(crate) pending: Vec<u8>,
    pub(crate) pending_sent: usize,
}

impl TlsState {
    pub(crate) fn new(config: &Arc<rustls::ServerConfig>) -> Result<Box<Self>, rustls::Error> {
        let mut session = rustls::ServerConnection::new(config.clone())?;
        // The connection's own send queue bounds what is buffered: rustls must not
        // truncate writes.
        session.set_buffer_limit(None);
        Ok(Box::new(TlsState { session, pending: Vec::new(), pending_sent: 0 }))
    }

    /// Feeds `ciphertext` and appends the plaintext it yields to `plaintext`. An error
    /// leaves an alert queued for [`TlsState::take_output`].
    pub(crate) fn read(&mut self, mut ciphertext: &[u8], plaintext: &mut Vec<u8>) -> std::io::Result<()> {
        use std::io::Read;
        while !ciphertext.is_empty() {
            let n = self.session.read_tls(&mut ciphertext)?;
            let state = self
                .session
                .process_new_packets()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            let mut available = state.plaintext_bytes_to_read();
            while available > 0 {
                let start = plaintext.len();
                plaintext.resize(start + available, 0);
                let read = self.session.reader().read(&mut plaintext[start..])?;
                plaintext.truncate(start + read);
                available -= read.min(available);
                if read == 0 {
                    break;
                }
            }
            if n == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Encrypts `plaintext` (the handshake must be complete); returns its length.
    pub(crate) fn encrypt<'a>(&mut self, plaintext: impl Iterator<Item = &'a [u8]>) -> std::io::Result<usize> {
        use std::io::Write;
        let mut total = 0;
        for piece in plaintext {
            self.session.writer().write_all(piece)?;
            total += piece.len();
        }
        Ok(total)
    }

    /// Encrypts what `conn` has queued, once the handshake is complete: the plaintext
    /// counts as written (report it with the returned length), and the records wait in
    /// [`TlsState::take_output`]. `None` if there is nothing to encrypt.
    pub(crate) fn encrypt_queued<D>(&mut self, conn: &mut crate::conn::Conn<D>) -> Option<std::io::Result<usize>> {
        if self.session.is_handshaking() {
            return None;
        }
        let frames = conn.poll_transmit()?;
        let result = self.encrypt(frames.map(crate::conn::OutFrame::as_slice));
        Some(result)
    }

    /// Moves the ciphertext rustls has ready (records, handshake messages, alerts) to
    /// [`TlsState::pending`]; returns whether anything is pending.
    pub(crate) fn take_output(&mut self) -> std::io::Result<bool> {
        if self.pending_sent == self.pending.len() {
            self.pending.clear();
            self.pending_sent = 0;
        }
        while self.session.wants_write() {
            self.session.write_tls(&mut self.pending)?;
        }
        if self.pending.capacity() > (64 << 10) && self.pending.is_empty() {
            self.pending = Vec::new();
        }
        Ok(self.pending_sent < self.pending.len())
    }

    /// The ciphertext still to write.
    pub(crate) fn unsent(&self) -> &[u8] {
        &self.pending[self.pending_sent..]
    }

    /// `n` more bytes of [`TlsState::unsent`] were written.
    pub(crate) fn sent(&mut self, n: usize) {
        self.pending_sent = (self.pending_sent + n).min(self.pending.len());
    }
}
