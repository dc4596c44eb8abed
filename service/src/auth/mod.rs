//! Who may connect, subscribe and publish: the service's implementation of the server's
//! [`Handler::authenticate`](ringcast::Handler::authenticate) and
//! [`Handler::check`](ringcast::Handler::check) hooks.
//!
//! - A client connection presents a JWT as `?token=` or `Authorization: Bearer` at the
//!   upgrade (a bad one gets 401), or, in pub/sub mode, as its first message
//!   `{"op":"auth","token":...}` within `--auth-timeout` (browsers cannot set headers).
//! - The token's `exp` closes the connection with [`CLOSE_TOKEN_EXPIRED`] unless
//!   `{"op":"refresh","token":...}` brought a later one first.
//! - Each subscribe and publish is decided by the channel rules ([`rules`]) and the
//!   token's claims; private channels take subscription tokens.
//!
//! Close codes after the upgrade:
//!
//! | code | when |
//! | --- | --- |
//! | 4001 | no token by the deadline, or another message before it |
//! | 4002 | the first-message token is invalid (bad signature, algorithm, claims...) |
//! | 4003 | the token expired (at the handshake it is a 401) |

pub mod mint;
pub mod pattern;
pub mod provider;
pub mod rules;
pub mod sessions;
pub mod settings;
pub mod token;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ringcast::{Access, ConnectionId, Request};

use rules::{ChannelRule, Refusal, Rules};
use sessions::{Deadlines, Session, Sessions};
use settings::{AuthArgs, AuthMode};
use token::{Identity, TokenError, Verifier};

/// No token by the deadline, or another message first.
pub const CLOSE_AUTH_REQUIRED: u16 = 4001;
/// The token sent as the first message is invalid.
pub const CLOSE_INVALID_TOKEN: u16 = 4002;
/// The connection's token expired.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4003;

/// Default of `--auth-timeout`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default of `--jwt-jwks-reload`.
const DEFAULT_JWKS_RELOAD: Duration = Duration::from_secs(10);

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct AuthMetrics {
    /// Refused tokens, by [`TokenError::REASONS`].
    pub failures: [AtomicU64; TokenError::REASONS.len()],
    /// Refused subscriptions, by [`Refusal::ALL`].
    pub refused_subscriptions: [AtomicU64; Refusal::ALL.len()],
    /// Refused publishes, by [`Refusal::ALL`].
    pub refused_publishes: [AtomicU64; Refusal::ALL.len()],
    /// Connections that authenticated.
    pub authenticated: AtomicU64,
    /// Connections closed because their token expired.
    pub expired: AtomicU64,
    /// Tokens refreshed over a connection.
    pub refreshed: AtomicU64,
}

impl AuthMetrics {
    fn fail(&self, reason: &str) {
        if let Some(i) = TokenError::REASONS.iter().position(|r| *r == reason) {
            self.failures[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a refusal of `access`.
    pub fn refused(&self, refusal: Refusal, subscribe: bool) {
        let i = Refusal::ALL.iter().position(|r| *r == refusal).unwrap_or(0);
        let counters = if subscribe { &self.refused_subscriptions } else { &self.refused_publishes };
        counters[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// How a client connection got in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// With a valid token (or auth is off).
    Open,
    /// Without a token; it has until the deadline to send one (pub/sub mode).
    Pending,
    /// Refused with this HTTP status.
    Refused(u16),
}

/// What became of a deadline that passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// It never sent its token.
    AuthTimeout,
    /// Its token expired.
    Expired,
}

/// The service's access policy and its per-connection state.
pub struct Auth {
    verifier: Option<Verifier>,
    /// The channel rules (also consulted for presence when auth is off).
    pub rules: Rules,
    anonymous: bool,
    timeout: Duration,
    leeway: Duration,
    jwks_reload: Duration,
    sessions: Sessions,
    deadlines: Deadlines,
    /// Counters.
    pub metrics: AuthMetrics,
}

impl Auth {
    /// Builds the policy from the `[auth]` settings and the `[[channels]]` rules.
    pub fn new(args: &AuthArgs, channels: Vec<ChannelRule>) -> Result<Auth, String> {
        let verifier = match args.mode() {
            AuthMode::Off => None,
            AuthMode::Jwt => Some(Verifier::new(&args.keys()?)?),
        };
        Ok(Auth {
            verifier,
            rules: Rules::new(channels)?,
            anonymous: args.anonymous.unwrap_or(false),
            timeout: args.timeout.unwrap_or(DEFAULT_TIMEOUT),
            leeway: args.leeway.unwrap_or(Duration::ZERO),
            jwks_reload: args.jwks_reload.unwrap_or(DEFAULT_JWKS_RELOAD),
            sessions: Sessions::default(),
            deadlines: Deadlines::default(),
            metrics: AuthMetrics::default(),
        })
    }

    /// Whether tokens are required.
    pub fn is_on(&self) -> bool {
        self.verifier.is_some()
    }

    /// Says at start, loudly where it matters, who may do what.
    pub fn log_at_start(&self) {
        match &self.verifier {
            None => tracing::warn!(
                "AUTH IS OFF: anyone who reaches the port may connect, subscribe to any topic and publish on \
                 any topic. Configure a JWT key ([auth] hmac_secret, public_key or jwks_file; --jwt-secret) and \
                 channel rules ([[channels]]) to decide who may do what"
            ),
            Some(verifier) => {
                tracing::info!(
                    algorithms = ?verifier.algorithms(),
                    rules = self.rules.iter().count(),
                    anonymous = self.anonymous,
                    "auth: connections present a JWT"
                );
                let open = self.rules.open_to_anyone();
                if self.anonymous && !open.is_empty() {
                    tracing::warn!(
                        patterns = ?open,
                        "auth: anonymous connections (no token) may subscribe to these channels"
                    );
                }
            }
        }
    }

    /// The token a request carries: `?token=` or `Authorization: Bearer`.
    pub fn request_token(request: &Request) -> Option<&str> {
        request
            .query_param("token")
            .or_else(|| request.header("authorization").and_then(|h| h.strip_prefix("Bearer ")).map(str::trim))
    }

    /// The upgrade of a client connection `id`: verifies its token, if any, and keeps the
    /// identity. `first_message`: the protocol lets a token come as the first message.
    pub fn admit(&self, request: &Request, id: ConnectionId, first_message: bool) -> Admission {
        let Some(verifier) = &self.verifier else { return Admission::Open };
        match Self::request_token(request) {
            Some(token) => match verifier.identity(token) {
                Ok(identity) => {
                    self.open_session(id, identity);
                    Admission::Open
                }
                Err(error) => {
                    self.metrics.fail(error.reason());
                    tracing::debug!(%id, %error, "auth: token refused at the upgrade");
                    Admission::Refused(401)
                }
            },
            None if self.anonymous => Admission::Open,
            None if first_message => {
                let deadline = Instant::now() + self.timeout;
                self.sessions.insert(id, Session { deadline: Some(deadline), ..Session::default() });
                self.deadlines.insert(deadline, id);
                Admission::Pending
            }
            None => {
                self.metrics.fail(TokenError::Missing.reason());
                Admission::Refused(401)
            }
        }
    }

    fn open_session(&self, id: ConnectionId, identity: Identity) -> Arc<Identity> {
        let deadline = identity.expires.map(|exp| self.instant_of(exp));
        let identity = Arc::new(identity);
        let old = self.sessions.upsert(id, |session| {
            session.identity = Some(identity.clone());
            std::mem::replace(&mut session.deadline, deadline)
        });
        if let Some(old) = old {
            self.deadlines.remove(old, id);
        }
        if let Some(deadline) = deadline {
            self.deadlines.insert(deadline, id);
        }
        self.metrics.authenticated.fetch_add(1, Ordering::Relaxed);
        identity
    }

    /// The instant a token with this `exp` stops being valid (leeway included).
    fn instant_of(&self, exp: u64) -> Instant {
        let at = UNIX_EPOCH + Duration::from_secs(exp) + self.leeway;
        Instant::now() + at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO)
    }

    /// `{"op":"auth"}`: a pending connection's first-message token.
    pub fn authenticate(&self, id: ConnectionId, token: &str) -> Result<Arc<Identity>, TokenError> {
        let Some(verifier) = &self.verifier else { return Err(TokenError::Missing) };
        match verifier.identity(token) {
            Ok(identity) => Ok(self.open_session(id, identity)),
            Err(error) => {
                self.metrics.fail(error.reason());
                Err(error)
            }
        }
    }

    /// `{"op":"refresh"}`: a later token for the same user. A refused one changes
    /// nothing: the connection still closes when its current token expires.
    pub fn refresh(&self, id: ConnectionId, token: &str) -> Result<Arc<Identity>, TokenError> {
        let Some(verifier) = &self.verifier else { return Err(TokenError::Missing) };
        let identity = verifier.identity(token).inspect_err(|e| self.metrics.fail(e.reason()))?;
        let current = self.identity(id);
        if current.as_ref().is_some_and(|c| c.user != identity.user) {
            self.metrics.fail("claims");
            return Err(TokenError::Claims("a refresh token must be for the same user".into()));
        }
        let identity = self.open_session(id, identity);
        self.metrics.refreshed.fetch_add(1, Ordering::Relaxed);
        Ok(identity)
    }

    /// Who `id` is (`None`: anonymous, pending or auth off).
    pub fn identity(&self, id: ConnectionId) -> Option<Arc<Identity>> {
        self.sessions.with(id, |s| s.and_then(|s| s.identity.clone()))
    }

    /// The [`Handler::check`](ringcast::Handler::check) decision for connection `id`.
    pub fn check(&self, id: ConnectionId, access: Access<'_>) -> Result<(), Refusal> {
        if self.verifier.is_none() {
            return Ok(());
        }
        let topic = access.topic();
        let subscribe = access.is_subscribe();
        let result = self.sessions.with(id, |session| {
            let session = session.as_deref();
            if session.is_some_and(|s| s.identity.is_none()) {
                return Err(Refusal::AuthenticationRequired);
            }
            let identity = session.and_then(|s| s.identity.as_deref());
            let granted = subscribe && session.is_some_and(|s| s.grants.iter().any(|g| &*g.channel == topic));
            self.rules.decide(topic, subscribe, identity, granted)
        });
        if let Err(refusal) = result {
            self.metrics.refused(refusal, subscribe);
        }
        result
    }

    /// Verifies a subscription token for `topic` and keeps the grant (until
    /// [`Auth::ungrant`] or the connection's end).
    pub fn grant(&self, id: ConnectionId, topic: &str, token: &str) -> Result<(), Refusal> {
        let Some(verifier) = &self.verifier else { return Ok(()) };
        let grant = match verifier.grant(token) {
            Ok(grant) => grant,
            Err(error) => {
                self.metrics.fail(error.reason());
                self.metrics.refused(Refusal::InvalidToken, true);
                return Err(Refusal::InvalidToken);
            }
        };
        let user = self.identity(id);
        if &*grant.channel != topic || user.as_ref().is_none_or(|u| u.user != grant.user) {
            self.metrics.refused(Refusal::InvalidToken, true);
            return Err(Refusal::InvalidToken);
        }
        self.sessions.with(id, |session| {
            if let Some(session) = session {
                session.grants.retain(|g| &*g.channel != topic);
                session.grants.push(grant);
            }
        });
        Ok(())
    }

    /// Drops the grant of `topic` (after an unsubscribe).
    pub fn ungrant(&self, id: ConnectionId, topic: &str) {
        self.sessions.with(id, |session| {
            if let Some(session) = session {
                session.grants.retain(|g| &*g.channel != topic);
            }
        });
    }

    /// Who `id` is (its user) and what presence shows of it in `topic` (the info of its
    /// subscription token for `topic`, else of its connection token), in one look-up.
    pub fn member(&self, id: ConnectionId, topic: &str) -> (Option<Arc<str>>, Option<Arc<str>>) {
        self.sessions.with(id, |session| {
            let Some(session) = session else { return (None, None) };
            let identity = session.identity.as_deref();
            let granted = session.grants.iter().find(|g| &*g.channel == topic).and_then(|g| g.info.clone());
            (identity.map(|i| i.user.clone()), granted.or_else(|| identity.and_then(|i| i.info.clone())))
        })
    }

    /// Whether the deadline of `id` has passed, and what it was.
    pub fn due(&self, id: ConnectionId) -> Option<Due> {
        let now = Instant::now();
        self.sessions.with(id, |session| {
            let session = session?;
            if session.deadline.is_none_or(|d| d > now) {
                return None;
            }
            Some(if session.identity.is_none() { Due::AuthTimeout } else { Due::Expired })
        })
    }

    /// Counts a pending connection that sent something other than its token.
    pub fn metrics_fail_missing(&self) {
        self.metrics.fail(TokenError::Missing.reason());
    }

    /// Counts a connection closed at its deadline.
    pub fn count_due(&self, due: Due) {
        match due {
            Due::AuthTimeout => self.metrics.fail("timeout"),
            Due::Expired => {
                self.metrics.expired.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A connection ended: forgets its session and deadline.
    pub fn end(&self, id: ConnectionId) {
        if let Some(Session { deadline: Some(deadline), .. }) = self.sessions.remove(id) {
            self.deadlines.remove(deadline, id);
        }
    }

    /// Sessions and pending deadlines, for `/metrics`.
    pub fn sizes(&self) -> (usize, usize) {
        (self.sessions.len(), self.deadlines.len())
    }

    /// Forever (on a thread of its own): hands each connection whose deadline passed to
    /// `on_due` (which visits it on its worker) and re-reads the JWKS file when it changes.
    pub fn run_deadlines(&self, on_due: impl FnMut(ConnectionId)) -> ! {
        let period = self.jwks_reload.max(Duration::from_millis(100));
        self.deadlines.run(period, on_due, || {
            if let Some(verifier) = &self.verifier {
                match verifier.reload_jwks() {
                    Ok(true) => tracing::info!("auth: JWKS file re-read"),
                    Ok(false) => {}
                    Err(error) => tracing::error!(%error, "auth: JWKS file unusable; keeping the keys read before"),
                }
            }
        })
    }
}
