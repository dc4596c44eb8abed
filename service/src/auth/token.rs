//! Verifying JWTs (`jsonwebtoken`): the keys, the accepted algorithms, the claims.
//!
//! A token's header names its algorithm, which must be one the service accepts, and
//! picks the key: `kid` names a key of the JWKS file (whose own `alg`, or the one its
//! type implies, must equal the header's), otherwise the algorithm's family does (HS* →
//! the HMAC secret, RS*/PS* → the RSA public key, ES* → the EC public key). `alg: none`
//! and every algorithm outside the accepted list are refused before any key is touched.
//!
//! Connection tokens carry `sub` (the user id), `exp`, optional `subscribe` and `publish`
//! pattern lists and optional presence `info`; subscription tokens carry `sub`,
//! `channel` and `exp` (and optional `info`). Each kind is refused where the other is
//! expected, so one cannot stand in for the other.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;

use super::pattern::Pattern;

/// Longest token accepted, in bytes: anything longer is refused unread.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Most patterns in one `subscribe` or `publish` claim.
pub const MAX_PATTERNS: usize = 256;

/// Why a token was refused. [`TokenError::reason`] is the label in
/// `ringcast_auth_failures_total{reason=...}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token where one is required.
    #[error("a token is required")]
    Missing,
    /// Not a JWT: not three base64url parts, bad JSON, too long.
    #[error("malformed token")]
    Malformed,
    /// The header's algorithm is not accepted (`none` included), or no key serves it.
    #[error("algorithm {0} is not accepted")]
    Algorithm(String),
    /// The signature does not verify with the key.
    #[error("bad signature")]
    Signature,
    /// `kid` names no key of the JWKS file.
    #[error("unknown key id {0:?}")]
    UnknownKey(String),
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is still ahead.
    #[error("token not valid yet")]
    NotYetValid,
    /// A claim is missing, malformed or unacceptable (issuer, audience, patterns...).
    #[error("bad claims: {0}")]
    Claims(String),
}

impl TokenError {
    /// Every [`TokenError::reason`], plus `timeout` (no token in time), for metrics.
    pub const REASONS: [&'static str; 9] = [
        "missing",
        "malformed",
        "algorithm",
        "signature",
        "unknown_key",
        "expired",
        "not_yet_valid",
        "claims",
        "timeout",
    ];

    /// A short, stable label.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing",
            TokenError::Malformed => "malformed",
            TokenError::Algorithm(_) => "algorithm",
            TokenError::Signature => "signature",
            TokenError::UnknownKey(_) => "unknown_key",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::Claims(_) => "claims",
        }
    }
}

/// Who a connection token says the connection is, and what it grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `sub` (shared with presence entries).
    pub user: Arc<str>,
    /// `exp`, in seconds since the Unix epoch (`None`: never, where allowed).
    pub expires: Option<u64>,
    /// `subscribe`: topics the user may subscribe to, beyond the channel rules.
    pub subscribe: Box<[Pattern]>,
    /// `publish`: topics the user may publish on.
    pub publish: Box<[Pattern]>,
    /// `info`, as JSON text: shown in presence.
    pub info: Option<Arc<str>>,
}

/// What a subscription token grants: one channel to one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// `sub`: the user it was issued to.
    pub user: Arc<str>,
    /// `channel`.
    pub channel: Box<str>,
    /// `exp`, in seconds since the Unix epoch.
    pub expires: Option<u64>,
    /// `info`, as JSON text: shown in this channel's presence instead of the connection's.
    pub info: Option<Arc<str>>,
}

/// The claims the service reads; others are ignored.
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    subscribe: Option<Vec<String>>,
    #[serde(default)]
    publish: Option<Vec<String>>,
    #[serde(default)]
    info: Option<serde_json::Value>,
    #[serde(default)]
    channel: Option<String>,
}

/// The keys and rules tokens are verified with.
#[derive(Debug, Clone)]
pub struct KeySettings {
    /// The HMAC secret (HS256, HS384, HS512).
    pub hmac_secret: Option<String>,
    /// A PEM public key: RSA (RS256, PS256...) or EC (ES256, ES384).
    pub public_key: Option<PathBuf>,
    /// A JWKS file, re-read when it changes.
    pub jwks_file: Option<PathBuf>,
    /// Accepted algorithms; empty: the defaults of the keys given (HS256, RS256, ES256).
    pub algorithms: Vec<Algorithm>,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Required `aud` (one of).
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Whether tokens without `exp` are accepted.
    pub allow_no_exp: bool,
}

/// The checks a token signed with `alg` must pass under `settings`.
fn validation(alg: Algorithm, settings: &KeySettings) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = settings.leeway.as_secs();
    validation.validate_nbf = true;
    validation.set_required_spec_claims(if settings.allow_no_exp { &[][..] } else { &["exp"][..] });
    match &settings.audience {
        Some(audience) => validation.set_audience(&[audience]),
        None => validation.validate_aud = false,
    }
    if let Some(issuer) = &settings.issuer {
        validation.set_issuer(&[issuer]);
    }
    validation
}

/// A JWKS file's keys by `kid`, with the algorithm each serves.
type KeySet = HashMap<String, (DecodingKey, Algorithm)>;

/// Verifies tokens.
pub struct Verifier {
    hmac: Option<DecodingKey>,
    rsa: Option<DecodingKey>,
    ec: Option<DecodingKey>,
    jwks: Option<Jwks>,
    /// The accepted algorithms, each with its checks, built once: a `Validation` holds
    /// hash sets, and building it per token was a measurable share of a connect.
    validations: Vec<(Algorithm, Validation)>,
    /// With one key and no JWKS file, the token's header cannot change which key checks
    /// it: that key, and checks that accept every accepted algorithm of its family.
    /// `jsonwebtoken::decode` then reads the header itself and refuses any other
    /// algorithm, so `verify` need not decode it first (the crate decodes it twice more).
    single_key: Option<(DecodingKey, Validation)>,
}

/// The JWKS file and the keys last read from it.
struct Jwks {
    path: PathBuf,
    keys: RwLock<(Arc<KeySet>, Option<SystemTime>)>,
}

impl Verifier {
    /// Loads the keys; an unreadable or unusable key file is an error naming it.
    pub fn new(settings: &KeySettings) -> Result<Verifier, String> {
        // ring for RSA and ECDSA, RustCrypto for the rest (see `provider`).
        super::provider::install();
        let hmac = settings.hmac_secret.as_deref().map(|secret| DecodingKey::from_secret(secret.as_bytes()));
        if settings.hmac_secret.as_deref().is_some_and(|s| s.len() < 16) {
            return Err("the JWT HMAC secret must be at least 16 bytes".into());
        }
        let (mut rsa, mut ec) = (None, None);
        if let Some(path) = &settings.public_key {
            let pem = std::fs::read(path).map_err(|e| format!("JWT public key {}: {e}", path.display()))?;
            if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                rsa = Some(key);
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                ec = Some(key);
            } else {
                return Err(format!("JWT public key {}: not a PEM RSA or EC public key", path.display()));
            }
        }
        let jwks = match &settings.jwks_file {
            Some(path) => {
                let (keys, modified) = read_jwks(path)?;
                Some(Jwks { path: path.clone(), keys: RwLock::new((Arc::new(keys), modified)) })
            }
            None => None,
        };
        if hmac.is_none() && rsa.is_none() && ec.is_none() && jwks.is_none() {
            return Err("JWT auth needs a key: hmac_secret, public_key or jwks_file".into());
        }
        let algorithms = if settings.algorithms.is_empty() {
            let mut defaults = Vec::new();
            if hmac.is_some() {
                defaults.push(Algorithm::HS256);
            }
            if rsa.is_some() {
                defaults.push(Algorithm::RS256);
            }
            if ec.is_some() {
                defaults.push(Algorithm::ES256);
            }
            if let Some(jwks) = &jwks {
                for (_, alg) in jwks.current().values() {
                    if !defaults.contains(alg) {
                        defaults.push(*alg);
                    }
                }
            }
            defaults
        } else {
            settings.algorithms.clone()
        };
        let validations: Vec<_> = algorithms.iter().map(|&alg| (alg, validation(alg, settings))).collect();
        let single_key = match (&hmac, &rsa, &ec, &jwks) {
            (Some(key), None, None, None) | (None, Some(key), None, None) | (None, None, Some(key), None) => {
                let accepted: Vec<Algorithm> =
                    algorithms.iter().copied().filter(|alg| family(*alg) == key.family()).collect();
                accepted.first().copied().map(|first| {
                    let mut checks = validation(first, settings);
                    checks.algorithms = accepted;
                    (key.clone(), checks)
                })
            }
            _ => None,
        };
        Ok(Verifier { hmac, rsa, ec, jwks, validations, single_key })
    }

    /// The accepted algorithms.
    pub fn algorithms(&self) -> Vec<Algorithm> {
        self.validations.iter().map(|(alg, _)| *alg).collect()
    }

    /// Verifies a connection token.
    pub fn identity(&self, token: &str) -> Result<Identity, TokenError> {
        let claims = self.verify(token)?;
        if claims.channel.is_some() {
            return Err(TokenError::Claims("a subscription token (with channel) is not a connection token".into()));
        }
        let user = user(claims.sub)?;
        Ok(Identity {
            user,
            expires: claims.exp,
            subscribe: patterns("subscribe", claims.subscribe)?,
            publish: patterns("publish", claims.publish)?,
            info: info(claims.info),
        })
    }

    /// Verifies a subscription token.
    pub fn grant(&self, token: &str) -> Result<Grant, TokenError> {
        let claims = self.verify(token)?;
        let Some(channel) = claims.channel.filter(|c| !c.is_empty()) else {
            return Err(TokenError::Claims("a subscription token needs a channel claim".into()));
        };
        Ok(Grant { user: user(claims.sub)?, channel: channel.into(), expires: claims.exp, info: info(claims.info) })
    }

    fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        if let Some((key, validation)) = &self.single_key {
            return jsonwebtoken::decode::<Claims>(token, key, validation)
                .map(|data| data.claims)
                .map_err(|e| decode_error(token, e));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| header_error(token))?;
        let Some((_, validation)) = self.validations.iter().find(|(alg, _)| *alg == header.alg) else {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        };
        let jwks_keys;
        let key = match (&header.kid, &self.jwks) {
            (Some(kid), Some(jwks)) => {
                jwks_keys = jwks.current();
                match jwks_keys.get(kid) {
                    Some((key, alg)) if *alg == header.alg => key,
                    Some(_) => return Err(TokenError::Algorithm(format!("{:?} for key {kid:?}", header.alg))),
                    None => return Err(TokenError::UnknownKey(kid.clone())),
                }
            }
            _ => {
                let key = match family(header.alg) {
                    AlgorithmFamily::Hmac => &self.hmac,
                    AlgorithmFamily::Rsa => &self.rsa,
                    AlgorithmFamily::Ec => &self.ec,
                    AlgorithmFamily::Ed => &None,
                };
                match key {
                    Some(key) => key,
                    None if header.kid.is_none() && self.jwks.is_some() => {
                        return Err(TokenError::UnknownKey(String::new()));
                    }
                    None => return Err(TokenError::Algorithm(format!("{:?} (no key for it)", header.alg))),
                }
            }
        };
        jsonwebtoken::decode::<Claims>(token, key, validation)
            .map(|data| data.claims)
            .map_err(|e| decode_error(token, e))
    }

    /// Re-reads the JWKS file if it changed since it was last read. A file that no longer
    /// parses keeps the keys read before it.
    pub fn reload_jwks(&self) -> Result<bool, String> {
        let Some(jwks) = &self.jwks else { return Ok(false) };
        let modified = std::fs::metadata(&jwks.path).and_then(|m| m.modified()).ok();
        if modified.is_some() && modified == jwks.keys.read().unwrap_or_else(|e| e.into_inner()).1 {
            return Ok(false);
        }
        let (keys, modified) = read_jwks(&jwks.path)?;
        *jwks.keys.write().unwrap_or_else(|e| e.into_inner()) = (Arc::new(keys), modified);
        Ok(true)
    }
}

impl Jwks {
    fn current(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).0.clone()
    }
}

/// The seconds since the Unix epoch.
#[cfg(test)]
fn unix_now() -> u64 {
    SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn family(alg: Algorithm) -> AlgorithmFamily {
    use Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => AlgorithmFamily::Hmac,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => AlgorithmFamily::Rsa,
        ES256 | ES384 => AlgorithmFamily::Ec,
        EdDSA => AlgorithmFamily::Ed,
    }
}

/// Why `jsonwebtoken::decode` refused `token`.
fn decode_error(token: &str, error: jsonwebtoken::errors::Error) -> TokenError {
    match error.kind() {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidSignature => TokenError::Signature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey => match jsonwebtoken::decode_header(token) {
            Ok(header) => TokenError::Algorithm(format!("{:?}", header.alg)),
            Err(_) => header_error(token),
        },
        ErrorKind::InvalidIssuer => TokenError::Claims("issuer".into()),
        ErrorKind::InvalidAudience => TokenError::Claims("audience".into()),
        ErrorKind::MissingRequiredClaim(claim) => TokenError::Claims(format!("{claim} is required")),
        ErrorKind::InvalidClaimFormat(claim) => TokenError::Claims(format!("{claim} is malformed")),
        // The header (`alg: none`, `HS1`, not JSON...) or the claims.
        ErrorKind::Json(_) | ErrorKind::Base64(_) | ErrorKind::Utf8(_) | ErrorKind::InvalidToken
            if jsonwebtoken::decode_header(token).is_err() =>
        {
            header_error(token)
        }
        ErrorKind::Json(_) => TokenError::Claims("unexpected claim types".into()),
        _ => TokenError::Malformed,
    }
}

/// A header that `jsonwebtoken` cannot read: an algorithm it does not know (`none`,
/// `HS1`...) is an algorithm refusal, anything else malformed.
fn header_error(token: &str) -> TokenError {
    use base64::Engine as _;
    let Some(encoded) = token.split('.').next() else { return TokenError::Malformed };
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded.trim_end_matches('=')) else {
        return TokenError::Malformed;
    };
    match serde_json::from_slice::<serde_json::Value>(&json) {
        Ok(serde_json::Value::Object(header)) => match header.get("alg") {
            Some(serde_json::Value::String(alg)) => {
                TokenError::Algorithm(alg.chars().take(16).collect::<String>().escape_debug().to_string())
            }
            _ => TokenError::Malformed,
        },
        _ => TokenError::Malformed,
    }
}

fn user(sub: Option<String>) -> Result<Arc<str>, TokenError> {
    match sub {
        Some(sub) if !sub.is_empty() && sub.len() <= 256 => Ok(sub.into()),
        Some(_) => Err(TokenError::Claims("sub must be 1 to 256 bytes".into())),
        None => Err(TokenError::Claims("sub is required".into())),
    }
}

fn patterns(claim: &str, list: Option<Vec<String>>) -> Result<Box<[Pattern]>, TokenError> {
    let list = list.unwrap_or_default();
    if list.len() > MAX_PATTERNS {
        return Err(TokenError::Claims(format!("{claim}: at most {MAX_PATTERNS} patterns")));
    }
    list.iter().map(|p| Pattern::parse(p).map_err(|e| TokenError::Claims(format!("{claim}: {e}")))).collect()
}

fn info(info: Option<serde_json::Value>) -> Option<Arc<str>> {
    info.filter(|v| !v.is_null()).map(|v| v.to_string().into())
}

/// Reads a JWKS file: every key with a `kid`, and the algorithm it serves (its `alg`, or
/// RS256 / ES256 / ES384 / HS256 / EdDSA from its type).
fn read_jwks(path: &Path) -> Result<(KeySet, Option<SystemTime>), String> {
    let name = path.display();
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let text = std::fs::read_to_string(path).map_err(|e| format!("JWKS file {name}: {e}"))?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| format!("JWKS file {name}: {e}"))?;
    let mut keys = KeySet::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else { continue };
        let alg = match &jwk.common.key_algorithm {
            Some(alg) => Algorithm::from_str(&alg.to_string())
                .map_err(|_| format!("JWKS file {name}: key {kid:?}: algorithm {alg} cannot verify JWTs"))?,
            None => match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P384 => Algorithm::ES384,
                AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                AlgorithmParameters::OctetKey(_) => Algorithm::HS256,
                AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
            },
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("JWKS file {name}: key {kid:?}: {e}"))?;
        keys.insert(kid, (key, alg));
    }
    if keys.is_empty() {
        return Err(format!("JWKS file {name}: no key with a kid"));
    }
    Ok((keys, modified))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef-secret";

    fn settings() -> KeySettings {
        KeySettings {
            hmac_secret: Some(SECRET.into()),
            public_key: None,
            jwks_file: None,
            algorithms: Vec::new(),
            issuer: None,
            audience: None,
            leeway: Duration::ZERO,
            allow_no_exp: false,
        }
    }

    fn hs(alg: Algorithm, claims: serde_json::Value) -> String {
        encode(&Header::new(alg), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// One key and no JWKS file: the path that lets `jsonwebtoken` read the header; and the
    /// same key through the path that reads it first (several keys, a JWKS file).
    fn both_paths() -> [Verifier; 2] {
        let single_key = Verifier::new(&settings()).unwrap();
        assert!(single_key.single_key.is_some());
        let mut header_first = Verifier::new(&settings()).unwrap();
        header_first.single_key = None;
        [single_key, header_first]
    }

    #[test]
    fn connection_tokens_and_their_refusals() {
        for verifier in both_paths() {
            connection_tokens_and_their_refusals_by(&verifier);
        }
    }

    fn connection_tokens_and_their_refusals_by(verifier: &Verifier) {
        let exp = unix_now() + 60;
        let good = hs(
            Algorithm::HS256,
            json!({"sub": "alice", "exp": exp, "subscribe": ["news:*"], "publish": ["chat:{sub}"], "info": {"n": 1}}),
        );
        let identity = verifier.identity(&good).unwrap();
        assert_eq!(&*identity.user, "alice");
        assert_eq!(identity.expires, Some(exp));
        assert_eq!(identity.subscribe[0].as_str(), "news:*");
        assert_eq!(identity.info.as_deref(), Some(r#"{"n":1}"#));

        let reason = |token: &str| verifier.identity(token).unwrap_err().reason();
        assert_eq!(reason(""), "missing");
        assert_eq!(reason("not a token"), "malformed");
        assert_eq!(reason(&"a".repeat(MAX_TOKEN_LEN + 1)), "malformed");
        assert_eq!(reason(&hs(Algorithm::HS256, json!({"sub": "a", "exp": unix_now() - 5}))), "expired");
        assert_eq!(reason(&hs(Algorithm::HS256, json!({"sub": "a", "exp": exp, "nbf": exp}))), "not_yet_valid");
        assert_eq!(reason(&hs(Algorithm::HS256, json!({"sub": "a"}))), "claims", "exp is required");
        assert_eq!(reason(&hs(Algorithm::HS256, json!({"exp": exp}))), "claims", "sub is required");
        assert_eq!(reason(&hs(Algorithm::HS256, json!({"sub": "a", "exp": exp, "subscribe": ["{x}"]}))), "claims");
        assert_eq!(reason(&hs(Algorithm::HS256, json!({"sub": "a", "exp": exp, "channel": "c"}))), "claims");
        assert_eq!(reason(&hs(Algorithm::HS256, json!({"sub": "a", "exp": "soon"}))), "claims");
        assert_eq!(reason(&hs(Algorithm::HS384, json!({"sub": "a", "exp": exp}))), "algorithm", "not accepted");
        // Another secret: the signature does not verify.
        let forged = encode(
            &Header::default(),
            &json!({"sub": "a", "exp": exp}),
            &EncodingKey::from_secret(b"another secret!!!"),
        )
        .unwrap();
        assert_eq!(reason(&forged), "signature");
        // A tampered payload under the original signature.
        let parts: Vec<&str> = good.split('.').collect();
        let tampered = format!("{}.{}.{}", parts[0], b64(br#"{"sub":"admin","exp":9999999999}"#), parts[2]);
        assert_eq!(reason(&tampered), "signature");
        // alg: none, with and without a signature.
        let none =
            format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), b64(br#"{"sub":"admin","exp":9999999999}"#));
        assert_eq!(reason(&none), "algorithm");
        assert_eq!(reason(&format!("{none}c2ln")), "algorithm");
        assert_eq!(reason(&format!("{}.{}.x", b64(br#"{"typ":"JWT"}"#), b64(b"{}"))), "malformed");
    }

    #[test]
    fn subscription_tokens_are_not_connection_tokens() {
        let verifier = Verifier::new(&settings()).unwrap();
        let exp = unix_now() + 60;
        let grant = verifier.grant(&hs(Algorithm::HS256, json!({"sub": "a", "channel": "vip:1", "exp": exp}))).unwrap();
        assert_eq!((&*grant.user, &*grant.channel), ("a", "vip:1"));
        let connection = hs(Algorithm::HS256, json!({"sub": "a", "exp": exp}));
        assert_eq!(verifier.grant(&connection).unwrap_err().reason(), "claims");
    }

    #[test]
    fn settings_that_cannot_work_are_errors() {
        let mut none = settings();
        none.hmac_secret = None;
        assert!(Verifier::new(&none).err().unwrap().contains("needs a key"));
        let mut short = settings();
        short.hmac_secret = Some("short".into());
        assert!(Verifier::new(&short).err().unwrap().contains("16 bytes"));
        let mut missing = settings();
        missing.public_key = Some("/nonexistent/key.pem".into());
        assert!(Verifier::new(&missing).err().unwrap().contains("/nonexistent/key.pem"));
    }

    #[test]
    fn issuer_audience_and_leeway() {
        let mut strict = settings();
        strict.issuer = Some("https://issuer.example".into());
        strict.audience = Some("ringcast".into());
        let verifier = Verifier::new(&strict).unwrap();
        let exp = unix_now() + 60;
        let ok =
            hs(Algorithm::HS256, json!({"sub": "a", "exp": exp, "iss": "https://issuer.example", "aud": "ringcast"}));
        assert!(verifier.identity(&ok).is_ok());
        let wrong_iss = hs(Algorithm::HS256, json!({"sub": "a", "exp": exp, "iss": "evil", "aud": "ringcast"}));
        assert_eq!(verifier.identity(&wrong_iss).unwrap_err().reason(), "claims");
        let mut lenient = settings();
        lenient.leeway = Duration::from_secs(30);
        let late = hs(Algorithm::HS256, json!({"sub": "a", "exp": unix_now() - 10}));
        assert!(Verifier::new(&lenient).unwrap().identity(&late).is_ok());
    }
}
