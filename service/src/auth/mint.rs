//! `ringcast token`: mints a connection or subscription token, for trying the service
//! out and for scripts (a real deployment's tokens come from its own login service).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};

/// `ringcast token`: prints a signed JWT.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    pub sub: String,

    /// HMAC secret (HS256/384/512); the same as the server's --jwt-secret.
    #[arg(long, value_name = "SECRET", env = "RINGCAST_JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// PEM private key (PKCS#8) for RS*, PS* or ES* tokens, instead of a secret.
    #[arg(long, value_name = "FILE", conflicts_with = "secret")]
    pub key: Option<PathBuf>,

    /// Algorithm [default: HS256 with --secret, RS256 with --key].
    #[arg(long, value_name = "ALG")]
    pub alg: Option<String>,

    /// `kid` header (the key's id in the server's JWKS file).
    #[arg(long)]
    pub kid: Option<String>,

    /// Lifetime: `exp` is now plus this [default: 1h].
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,

    /// A pattern the user may subscribe to beyond the channel rules (repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub subscribe: Vec<String>,

    /// A pattern the user may publish on (repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub publish: Vec<String>,

    /// Presence `info`: a JSON value.
    #[arg(long, value_name = "JSON")]
    pub info: Option<String>,

    /// Make a subscription token for this channel instead of a connection token.
    #[arg(long, value_name = "TOPIC")]
    pub channel: Option<String>,

    /// `iss` claim.
    #[arg(long)]
    pub iss: Option<String>,

    /// `aud` claim.
    #[arg(long)]
    pub aud: Option<String>,
}

/// The token `args` describe.
pub fn mint(args: &TokenArgs) -> Result<String, String> {
    let alg = match &args.alg {
        Some(name) => Algorithm::from_str(name).map_err(|_| format!("unknown algorithm {name:?}"))?,
        None if args.key.is_some() => Algorithm::RS256,
        None => Algorithm::HS256,
    };
    let key = match (&args.secret, &args.key) {
        (Some(secret), None) => EncodingKey::from_secret(secret.as_bytes()),
        (None, Some(path)) => {
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let key = match alg {
                Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
                Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
                _ => EncodingKey::from_rsa_pem(&pem),
            };
            key.map_err(|e| format!("{}: {e}", path.display()))?
        }
        _ => return Err("give --secret (or RINGCAST_JWT_SECRET) or --key".into()),
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut claims = Map::new();
    claims.insert("sub".into(), json!(args.sub));
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now + args.ttl.as_secs()));
    if !args.subscribe.is_empty() {
        claims.insert("subscribe".into(), json!(args.subscribe));
    }
    if !args.publish.is_empty() {
        claims.insert("publish".into(), json!(args.publish));
    }
    if let Some(info) = &args.info {
        let value: Value = serde_json::from_str(info).map_err(|e| format!("--info is not JSON: {e}"))?;
        claims.insert("info".into(), value);
    }
    for (name, value) in [("channel", &args.channel), ("iss", &args.iss), ("aud", &args.aud)] {
        if let Some(value) = value {
            claims.insert(name.into(), json!(value));
        }
    }
    let mut header = Header::new(alg);
    header.kid = args.kid.clone();
    super::provider::install();
    jsonwebtoken::encode(&header, &Value::Object(claims), &key).map_err(|e| format!("signing: {e}"))
}
