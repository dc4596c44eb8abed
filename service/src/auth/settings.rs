//! The `[auth]` and `[presence]` tables of the config file and their flags.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::ValueEnum;
use serde::Deserialize;

use super::token::KeySettings;

/// Whether connections must present a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone may connect, subscribe to any topic and publish on any topic.
    Off,
    /// Connections present a JWT (see the `[auth]` keys).
    Jwt,
}

/// `[auth]`: connection tokens (JWT) and what they grant.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthArgs {
    /// Connection auth: `jwt` or `off` [default: jwt when a key (--jwt-secret,
    /// --jwt-public-key, --jwt-jwks) is configured, else off: then anyone may connect,
    /// subscribe to anything and publish anywhere, and the service warns at start].
    #[arg(id = "auth_mode", long = "auth", value_enum, value_name = "MODE")]
    pub mode: Option<AuthMode>,

    /// HMAC secret for HS256 tokens (at least 16 bytes).
    #[arg(long = "jwt-secret", value_name = "SECRET", env = "RINGCAST_JWT_SECRET", hide_env_values = true)]
    pub hmac_secret: Option<String>,

    /// PEM public key for RS256 (RSA) or ES256 (EC P-256) tokens.
    #[arg(long = "jwt-public-key", value_name = "FILE")]
    pub public_key: Option<PathBuf>,

    /// JWKS file ({"keys": [...]}); tokens name their key with `kid`. Re-read when it
    /// changes (see --jwt-jwks-reload); a file that stops parsing keeps the keys before it.
    #[arg(long = "jwt-jwks", value_name = "FILE")]
    pub jwks_file: Option<PathBuf>,

    /// How often the JWKS file is checked for changes [default: 10s].
    #[arg(long = "jwt-jwks-reload", value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(default, with = "duration_opt")]
    pub jwks_reload: Option<Duration>,

    /// Accepted algorithms, e.g. HS256,RS256 [default: HS256 with a secret, RS256 or ES256
    /// with a public key, each JWKS key's own]. `none` is never accepted.
    #[arg(long = "jwt-algorithms", value_name = "ALG,...", value_delimiter = ',')]
    pub algorithms: Option<Vec<String>>,

    /// Required `iss` claim.
    #[arg(long = "jwt-issuer", value_name = "ISSUER")]
    pub issuer: Option<String>,

    /// Required `aud` claim.
    #[arg(long = "jwt-audience", value_name = "AUDIENCE")]
    pub audience: Option<String>,

    /// Clock skew allowed on `exp` and `nbf` [default: 0s].
    #[arg(long = "jwt-leeway", value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(default, with = "duration_opt")]
    pub leeway: Option<Duration>,

    /// Accept tokens without `exp` (connections that never expire) [default: false].
    #[arg(long = "jwt-allow-no-exp", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub allow_no_exp: Option<bool>,

    /// Pub/sub mode: how long a connection opened without a token has to send
    /// {"op":"auth","token":...} before it is closed with 4001 [default: 5s].
    #[arg(id = "auth_timeout", long = "auth-timeout", value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(default, with = "duration_opt")]
    pub timeout: Option<Duration>,

    /// Let connections without a token in, as anonymous: they may use channels whose rule
    /// says "anyone" [default: false].
    #[arg(long = "allow-anonymous", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub anonymous: Option<bool>,
}

impl AuthArgs {
    /// Fills every setting not given on the command line from `file`.
    pub fn or(self, file: AuthArgs) -> AuthArgs {
        AuthArgs {
            mode: self.mode.or(file.mode),
            hmac_secret: self.hmac_secret.or(file.hmac_secret),
            public_key: self.public_key.or(file.public_key),
            jwks_file: self.jwks_file.or(file.jwks_file),
            jwks_reload: self.jwks_reload.or(file.jwks_reload),
            algorithms: self.algorithms.or(file.algorithms),
            issuer: self.issuer.or(file.issuer),
            audience: self.audience.or(file.audience),
            leeway: self.leeway.or(file.leeway),
            allow_no_exp: self.allow_no_exp.or(file.allow_no_exp),
            timeout: self.timeout.or(file.timeout),
            anonymous: self.anonymous.or(file.anonymous),
        }
    }

    /// Whether tokens are required: the mode, else whether a key is configured.
    pub fn mode(&self) -> AuthMode {
        self.mode.unwrap_or(if self.hmac_secret.is_some() || self.public_key.is_some() || self.jwks_file.is_some() {
            AuthMode::Jwt
        } else {
            AuthMode::Off
        })
    }

    /// The key settings, with the algorithm names checked.
    pub fn keys(&self) -> Result<KeySettings, String> {
        let algorithms = self
            .algorithms
            .iter()
            .flatten()
            .map(|name| {
                jsonwebtoken::Algorithm::from_str(name.trim())
                    .map_err(|_| format!("unknown JWT algorithm {name:?} (HS256, RS256, ES256, PS256, EdDSA, ...)"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(KeySettings {
            hmac_secret: self.hmac_secret.clone(),
            public_key: self.public_key.clone(),
            jwks_file: self.jwks_file.clone(),
            algorithms,
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            leeway: self.leeway.unwrap_or(Duration::ZERO),
            allow_no_exp: self.allow_no_exp.unwrap_or(false),
        })
    }
}

/// `[presence]`: who is subscribed, in one node and across a cluster.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceArgs {
    /// With --cluster: how long a node's presence entries outlive its last refresh in
    /// Redis (each node refreshes its own every third of this), so a crashed node's
    /// clients vanish within it [default: 15s].
    #[arg(id = "presence_ttl", long = "presence-ttl", value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(default, with = "duration_opt")]
    pub ttl: Option<Duration>,
}

impl PresenceArgs {
    /// Fills every setting not given on the command line from `file`.
    pub fn or(self, file: PresenceArgs) -> PresenceArgs {
        PresenceArgs { ttl: self.ttl.or(file.ttl) }
    }
}

/// Durations in the config file are written like the flags: "10s", "500ms".
mod duration_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use crate::settings::ServeArgs;

    #[test]
    fn the_sample_config_parses_with_its_rules_uncommented() {
        let sample = include_str!("../../../deploy/ringcast.toml");
        let file: ServeArgs = toml::from_str(sample).unwrap();
        assert_eq!(file.auth.mode(), super::AuthMode::Off);
        // The commented rules and keys are valid too.
        let uncommented: String = sample
            .lines()
            .skip_while(|l| !l.starts_with("[auth]"))
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|l| !l.contains(' ') || l.contains(" = ") || l.starts_with('['))
                    .unwrap_or(l)
            })
            .map(|l| if l.starts_with("mode = ") { "mode = \"jwt\"" } else { l })
            .collect::<Vec<_>>()
            .join("\n");
        let file: ServeArgs = toml::from_str(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        assert_eq!(file.auth.mode(), super::AuthMode::Jwt);
        assert_eq!(file.channels.len(), 3);
        assert_eq!(file.presence.ttl, Some(std::time::Duration::from_secs(15)));
        assert!(file.auth.keys().is_ok());
    }
}
