//! The `jsonwebtoken` crypto provider the service installs: RSA and ECDSA signatures are
//! verified with `ring` (already in the build for TLS, and several times faster than the
//! pure-Rust RSA and P-256 code), everything else — HMAC, EdDSA, and all signing — with
//! the RustCrypto provider.
//!
//! Keys reach `ring` as `jsonwebtoken` decoded them: an RSA key from PEM is its PKCS#1
//! `RSAPublicKey` (the bit string of the SPKI), from a JWK its modulus and exponent; an EC
//! key is the uncompressed point. A key of the wrong family for the algorithm is refused
//! before any signature is looked at.

use std::sync::OnceLock;

use jsonwebtoken::crypto::{CryptoProvider, JwtVerifier, rust_crypto};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::signature::{Error as SignatureError, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};
use ring::signature as ring_sig;

/// The provider: installed once per process, before the first token is read or made.
pub fn install() {
    static PROVIDER: OnceLock<&'static CryptoProvider> = OnceLock::new();
    let provider = PROVIDER.get_or_init(|| {
        Box::leak(Box::new(CryptoProvider {
            signer_factory: rust_crypto::DEFAULT_PROVIDER.signer_factory,
            verifier_factory: new_verifier,
            jwk_utils: rust_crypto::DEFAULT_PROVIDER.jwk_utils.clone(),
        }))
    });
    let _ = provider.install_default();
}

#[derive(Clone, Copy)]
enum Scheme {
    Rsa(&'static ring_sig::RsaParameters),
    Ec(&'static ring_sig::EcdsaVerificationAlgorithm),
}

struct RingVerifier {
    algorithm: Algorithm,
    scheme: Scheme,
    key: DecodingKey,
}

fn new_verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    use Algorithm::*;
    let (scheme, family) = match algorithm {
        RS256 => (Scheme::Rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA256), AlgorithmFamily::Rsa),
        RS384 => (Scheme::Rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA384), AlgorithmFamily::Rsa),
        RS512 => (Scheme::Rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA512), AlgorithmFamily::Rsa),
        PS256 => (Scheme::Rsa(&ring_sig::RSA_PSS_2048_8192_SHA256), AlgorithmFamily::Rsa),
        PS384 => (Scheme::Rsa(&ring_sig::RSA_PSS_2048_8192_SHA384), AlgorithmFamily::Rsa),
        PS512 => (Scheme::Rsa(&ring_sig::RSA_PSS_2048_8192_SHA512), AlgorithmFamily::Rsa),
        ES256 => (Scheme::Ec(&ring_sig::ECDSA_P256_SHA256_FIXED), AlgorithmFamily::Ec),
        ES384 => (Scheme::Ec(&ring_sig::ECDSA_P384_SHA384_FIXED), AlgorithmFamily::Ec),
        HS256 | HS384 | HS512 | EdDSA => return (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(algorithm, key),
    };
    if key.family() != family {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    Ok(Box::new(RingVerifier { algorithm: *algorithm, scheme, key: key.clone() }))
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> std::result::Result<(), SignatureError> {
        let verified = match (self.scheme, self.key.kind()) {
            (Scheme::Rsa(params), DecodingKeyKind::SecretOrDer(der)) => {
                ring_sig::UnparsedPublicKey::new(params, der).verify(message, signature)
            }
            (Scheme::Rsa(params), DecodingKeyKind::RsaModulusExponent { n, e }) => {
                ring_sig::RsaPublicKeyComponents { n, e }.verify(params, message, signature)
            }
            (Scheme::Ec(params), DecodingKeyKind::SecretOrDer(point)) => {
                ring_sig::UnparsedPublicKey::new(params, point).verify(message, signature)
            }
            (Scheme::Ec(_), DecodingKeyKind::RsaModulusExponent { .. }) => Err(ring::error::Unspecified),
        };
        verified.map_err(|_| SignatureError::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}
