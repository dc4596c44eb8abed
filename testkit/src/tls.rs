//! Throw-away certificates for `wss://` tests.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// A fresh test CA and a server certificate signed by it, written as PEM files in a
/// temporary directory (removed on drop).
///
/// Give `cert_file`/`key_file` to the server under test and `ca_file` to clients
/// ([`crate::ConnectOpts::ca_file`]); Chromium needs
/// [`crate::browser::PageOpts::ignore_certificate_errors`] instead.
#[derive(Debug)]
pub struct TestCerts {
    /// The directory holding the files.
    pub dir: PathBuf,
    /// The CA certificate (PEM): the root to trust.
    pub ca_file: PathBuf,
    /// The server certificate (PEM; leaf only).
    pub cert_file: PathBuf,
    /// The leaf followed by the CA certificate (PEM).
    pub chain_file: PathBuf,
    /// The server's private key (PKCS#8 PEM).
    pub key_file: PathBuf,
    /// `ca_file`'s contents.
    pub ca_pem: String,
    /// `cert_file`'s contents.
    pub cert_pem: String,
    /// `key_file`'s contents.
    pub key_pem: String,
}

impl TestCerts {
    /// A CA plus a server certificate for `names` (DNS names or IP addresses, e.g.
    /// `["localhost", "127.0.0.1"]`).
    ///
    /// # Panics
    /// If generation or writing fails.
    pub fn generate(names: &[&str]) -> TestCerts {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "ringcast test CA");
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");

        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("server cert params");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().cloned().unwrap_or_else(|| "localhost".into()));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("server key");
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let cert = params.signed_by(&key, &issuer).expect("sign server cert");

        let dir = crate::temp_dir("certs");
        let ca_pem = ca_cert.pem();
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        let write = |name: &str, data: &str| {
            let p = dir.join(name);
            std::fs::write(&p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
            p
        };
        TestCerts {
            ca_file: write("ca.pem", &ca_pem),
            cert_file: write("cert.pem", &cert_pem),
            chain_file: write("chain.pem", &format!("{cert_pem}{ca_pem}")),
            key_file: write("key.pem", &key_pem),
            dir,
            ca_pem,
            cert_pem,
            key_pem,
        }
    }

    /// Certificates for `localhost` and `127.0.0.1`.
    pub fn localhost() -> TestCerts {
        Self::generate(&["localhost", "127.0.0.1"])
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
