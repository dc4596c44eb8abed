//! Channel rules: per namespace (a pattern), who may subscribe and publish, and whether
//! presence is kept and joins and leaves are announced.
//!
//! Each topic is governed by the first rule whose pattern matches it, `{sub}` standing
//! for any user there; topics no rule matches are governed by the default rule
//! (`subscribe = "claims"`, `publish = "claims"`, no presence). The rule's level then
//! decides, for the connection asking:
//!
//! | level | who may |
//! | --- | --- |
//! | `anyone` | every connection, anonymous ones included |
//! | `authenticated` | every connection with a valid token |
//! | `claims` | connections whose token's `subscribe` (or `publish`) claim has a pattern matching the topic |
//! | `token` | (subscribe only) connections that present a subscription token for the channel |
//! | `nobody` | no client (the server's own publishes still go out) |
//!
//! A `{sub}` in the governing pattern must bind to the asking user for `anyone` and
//! `authenticated` to apply, so `user:{sub}` with `subscribe = "authenticated"` lets each
//! user read their own channel only. Claims grant access at every level but `nobody`.

use serde::Deserialize;

use super::pattern::{Pattern, Who};
use super::token::Identity;

/// Who may do something on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Every connection, anonymous ones included.
    Anyone,
    /// Every connection with a valid token.
    Authenticated,
    /// Connections whose token's claims grant it.
    #[default]
    Claims,
    /// Connections with a subscription token for the channel (subscribe only).
    Token,
    /// No client.
    Nobody,
}

/// One `[[channels]]` entry of the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelRule {
    /// The topics it governs.
    pub pattern: Pattern,
    /// Who may subscribe [default: claims].
    #[serde(default)]
    pub subscribe: Level,
    /// Who may publish [default: claims].
    #[serde(default)]
    pub publish: Level,
    /// Keep who is subscribed, for `presence` queries [default: false].
    #[serde(default)]
    pub presence: bool,
    /// Tell subscribers when someone joins or leaves [default: false].
    #[serde(default)]
    pub join_leave: bool,
}

/// Why an access was refused: the `reason` of error events and of
/// `ringcast_subscriptions_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The connection has not authenticated (yet), and the channel wants it.
    #[error("authentication_required")]
    AuthenticationRequired,
    /// The channel needs a subscription token.
    #[error("subscription_token_required")]
    TokenRequired,
    /// The subscription token presented does not grant the channel.
    #[error("invalid_subscription_token")]
    InvalidToken,
    /// Neither the channel's rule nor the token's claims allow it.
    #[error("forbidden")]
    Forbidden,
}

impl Refusal {
    /// Every reason, for metrics.
    pub const ALL: [Refusal; 4] =
        [Refusal::AuthenticationRequired, Refusal::TokenRequired, Refusal::InvalidToken, Refusal::Forbidden];

    /// The label.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::AuthenticationRequired => "authentication_required",
            Refusal::TokenRequired => "subscription_token_required",
            Refusal::InvalidToken => "invalid_subscription_token",
            Refusal::Forbidden => "forbidden",
        }
    }

    /// The refusal a [`Refusal::reason`] names.
    pub fn from_reason(reason: &str) -> Option<Refusal> {
        Refusal::ALL.into_iter().find(|r| r.reason() == reason)
    }

    /// A sentence for the client.
    pub fn explain(self, subscribe: bool) -> &'static str {
        match (self, subscribe) {
            (Refusal::AuthenticationRequired, _) => "this channel needs an authenticated connection",
            (Refusal::TokenRequired, _) => "this channel needs a subscription token",
            (Refusal::InvalidToken, _) => "the subscription token does not grant this channel to this user",
            (Refusal::Forbidden, true) => "neither the channel's rule nor the token's claims allow subscribing here",
            (Refusal::Forbidden, false) => "neither the channel's rule nor the token's claims allow publishing here",
        }
    }
}

/// What a topic's rule says beyond access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    /// Presence is kept.
    pub presence: bool,
    /// Joins and leaves are announced to subscribers.
    pub join_leave: bool,
}

/// The compiled rules.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<ChannelRule>,
}

const DEFAULT_RULE: (Level, Level, Options) =
    (Level::Claims, Level::Claims, Options { presence: false, join_leave: false });

impl Rules {
    /// Checks the rules: a `token` level is for subscribing only.
    pub fn new(rules: Vec<ChannelRule>) -> Result<Rules, String> {
        for rule in &rules {
            if rule.publish == Level::Token {
                return Err(format!("channel rule {}: publish cannot be \"token\"", rule.pattern));
            }
        }
        Ok(Rules { rules })
    }

    /// The rules, in order.
    pub fn iter(&self) -> impl Iterator<Item = &ChannelRule> {
        self.rules.iter()
    }

    fn governing(&self, topic: &str) -> Option<&ChannelRule> {
        self.rules.iter().find(|rule| rule.pattern.matches(topic, Who::AnyUser))
    }

    /// The presence options of `topic`.
    pub fn options(&self, topic: &str) -> Options {
        self.governing(topic).map_or(DEFAULT_RULE.2, |r| Options { presence: r.presence, join_leave: r.join_leave })
    }

    /// Whether `identity` (`None`: anonymous) may subscribe to (`subscribe`) or publish
    /// on `topic`; `granted`: a subscription token for it was verified.
    pub fn decide(
        &self,
        topic: &str,
        subscribe: bool,
        identity: Option<&Identity>,
        granted: bool,
    ) -> Result<(), Refusal> {
        let (level, bound) = match self.governing(topic) {
            Some(rule) => {
                let who = identity.map_or(Who::Anonymous, |i| Who::User(&i.user));
                let bound = !rule.pattern.has_subject() || rule.pattern.matches(topic, who);
                (if subscribe { rule.subscribe } else { rule.publish }, bound)
            }
            None => (if subscribe { DEFAULT_RULE.0 } else { DEFAULT_RULE.1 }, true),
        };
        let claimed = identity.is_some_and(|i| {
            let claims = if subscribe { &i.subscribe } else { &i.publish };
            claims.iter().any(|p| p.matches(topic, Who::User(&i.user)))
        });
        match level {
            Level::Nobody => Err(Refusal::Forbidden),
            Level::Anyone if bound => Ok(()),
            Level::Authenticated if bound && identity.is_some() => Ok(()),
            Level::Token if granted => Ok(()),
            _ if claimed => Ok(()),
            Level::Token => Err(Refusal::TokenRequired),
            _ if identity.is_none() => Err(Refusal::AuthenticationRequired),
            _ => Err(Refusal::Forbidden),
        }
    }

    /// Patterns anonymous connections may subscribe to, for the warning at start.
    pub fn open_to_anyone(&self) -> Vec<&str> {
        self.rules.iter().filter(|r| r.subscribe == Level::Anyone).map(|r| r.pattern.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(toml_text: &str) -> Rules {
        #[derive(Deserialize)]
        struct File {
            channels: Vec<ChannelRule>,
        }
        Rules::new(toml::from_str::<File>(toml_text).unwrap().channels).unwrap()
    }

    fn user(name: &str, subscribe: &[&str], publish: &[&str]) -> Identity {
        let compile = |list: &[&str]| list.iter().map(|p| Pattern::parse(p).unwrap()).collect();
        Identity {
            user: name.into(),
            expires: None,
            subscribe: compile(subscribe),
            publish: compile(publish),
            info: None,
        }
    }

    const SAMPLE: &str = r#"
        [[channels]]
        pattern = "news:**"
        subscribe = "anyone"
        publish = "claims"
        [[channels]]
        pattern = "user:{sub}"
        subscribe = "authenticated"
        publish = "nobody"
        [[channels]]
        pattern = "vip:*"
        subscribe = "token"
        presence = true
        join_leave = true
        [[channels]]
        pattern = "chat:*"
        subscribe = "authenticated"
        publish = "authenticated"
        presence = true
    "#;

    #[test]
    fn the_sample_rules_decide_as_documented() {
        let rules = rules(SAMPLE);
        let alice = user("alice", &[], &[]);
        let editor = user("ed", &["user:*"], &["news:**"]);
        let ok = Ok(());
        // news: anyone reads, claims publish.
        assert_eq!(rules.decide("news:uk:london", true, None, false), ok);
        assert_eq!(rules.decide("news:uk", false, Some(&alice), false), Err(Refusal::Forbidden));
        assert_eq!(rules.decide("news:uk", false, None, false), Err(Refusal::AuthenticationRequired));
        assert_eq!(rules.decide("news:uk", false, Some(&editor), false), ok);
        // user:{sub}: the owner only, or claims; nobody publishes, claims or not.
        assert_eq!(rules.decide("user:alice", true, Some(&alice), false), ok);
        assert_eq!(rules.decide("user:bob", true, Some(&alice), false), Err(Refusal::Forbidden));
        assert_eq!(rules.decide("user:alice", true, None, false), Err(Refusal::AuthenticationRequired));
        assert_eq!(rules.decide("user:bob", true, Some(&editor), false), ok, "claims grant it");
        assert_eq!(rules.decide("user:alice", false, Some(&alice), false), Err(Refusal::Forbidden));
        // vip: a subscription token, or claims.
        assert_eq!(rules.decide("vip:1", true, Some(&alice), false), Err(Refusal::TokenRequired));
        assert_eq!(rules.decide("vip:1", true, Some(&alice), true), ok);
        assert_eq!(rules.decide("vip:1", true, Some(&user("v", &["vip:*"], &[])), false), ok);
        // Unmatched topics: the default rule, claims only.
        assert_eq!(rules.decide("other", true, Some(&alice), false), Err(Refusal::Forbidden));
        assert_eq!(rules.decide("other", true, Some(&user("o", &["other"], &[])), false), ok);
        assert_eq!(rules.decide("other", true, None, false), Err(Refusal::AuthenticationRequired));
        // Presence options follow the governing rule, whoever asks.
        assert_eq!(rules.options("vip:1"), Options { presence: true, join_leave: true });
        assert_eq!(rules.options("chat:x"), Options { presence: true, join_leave: false });
        assert_eq!(rules.options("user:anyone"), Options::default());
        assert_eq!(rules.open_to_anyone(), ["news:**"]);
    }

    #[test]
    fn token_publish_and_bad_patterns_are_config_errors() {
        #[derive(Deserialize)]
        struct File {
            #[allow(dead_code)]
            channels: Vec<ChannelRule>,
        }
        let bad = toml::from_str::<File>("[[channels]]\npattern = \"x\"\npublish = \"token\"\n").unwrap();
        assert!(Rules::new(bad.channels).unwrap_err().contains("publish cannot be"));
        assert!(toml::from_str::<File>("[[channels]]\npattern = \"a{b}\"\n").is_err());
        assert!(toml::from_str::<File>("[[channels]]\npattern = \"a\"\nsubscribe = \"everyone\"\n").is_err());
        for refusal in Refusal::ALL {
            assert_eq!(Refusal::from_reason(refusal.reason()), Some(refusal));
        }
    }
}
