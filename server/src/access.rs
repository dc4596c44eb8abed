//! What a connection asks to do with a topic ([`Access`]) and why it may not ([`Denied`]),
//! decided by [`Handler::check`](crate::Handler::check).

use std::borrow::Cow;

/// An action a connection's client asks for, put to
/// [`Handler::check`](crate::Handler::check) before it happens.
///
/// ```
/// use ringcast::Access;
/// let access = Access::Subscribe("news:sports");
/// assert_eq!(access.topic(), "news:sports");
/// assert!(access.is_subscribe());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access<'a> {
    /// Receive what is sent to the topic
    /// ([`Connection::subscribe`](crate::Connection::subscribe)).
    Subscribe(&'a str),
    /// Send to the topic's subscribers
    /// ([`Connection::publish`](crate::Connection::publish)).
    Publish(&'a str),
}

impl<'a> Access<'a> {
    /// The topic the action is about.
    pub fn topic(&self) -> &'a str {
        match self {
            Access::Subscribe(topic) | Access::Publish(topic) => topic,
        }
    }

    /// Whether this is a subscription.
    pub fn is_subscribe(&self) -> bool {
        matches!(self, Access::Subscribe(_))
    }
}

/// Why [`Handler::check`](crate::Handler::check) refused an [`Access`]: a short reason the
/// application chooses (e.g. `"forbidden"`), handed back to the code that asked.
///
/// ```
/// use ringcast::Denied;
/// let denied = Denied::new("forbidden");
/// assert_eq!(denied.reason(), "forbidden");
/// assert_eq!(denied.to_string(), "forbidden");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Denied {
    reason: Cow<'static, str>,
}

impl Denied {
    /// A refusal for `reason`.
    pub fn new(reason: impl Into<Cow<'static, str>>) -> Self {
        Denied { reason: reason.into() }
    }

    /// The reason given.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}
