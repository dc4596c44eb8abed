//! What a send carries ([`Message`]) and where it goes ([`Target`]).

use std::fmt;
use std::sync::Arc;

use ringcast_codec::{PreparedMessage, Split};

use crate::api::connection::ConnectionRef;
use crate::id::ConnectionId;

/// A message to send: text, binary, or already encoded.
///
/// Built with `.into()` from `&str` (text), `&[u8]` (binary) or `&PreparedMessage`, so
/// every send method takes `impl Into<Message>`:
///
/// ```
/// use ringcast::Message;
/// let text: Message = "hello".into();
/// let binary: Message = (&[1u8, 2, 3][..]).into();
/// assert!(matches!((text, binary), (Message::Text(_), Message::Binary(_))));
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Message<'a> {
    /// A text message.
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
    /// A message encoded once with [`PreparedMessage`], e.g. to send the same bytes from
    /// several places.
    Prepared(&'a PreparedMessage),
}

impl Message<'_> {
    /// The message encoded, split as configured (a prepared message keeps its own frames).
    pub(crate) fn prepare(self, split: Split) -> PreparedMessage {
        match self {
            Message::Text(text) => PreparedMessage::text(text, split),
            Message::Binary(data) => PreparedMessage::binary(data, split),
            Message::Prepared(prepared) => prepared.clone(),
        }
    }
}

impl<'a> From<&'a str> for Message<'a> {
    fn from(text: &'a str) -> Self {
        Message::Text(text)
    }
}

impl<'a> From<&'a String> for Message<'a> {
    fn from(text: &'a String) -> Self {
        Message::Text(text)
    }
}

impl<'a> From<&'a [u8]> for Message<'a> {
    fn from(data: &'a [u8]) -> Self {
        Message::Binary(data)
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for Message<'a> {
    fn from(data: &'a [u8; N]) -> Self {
        Message::Binary(data)
    }
}

impl<'a> From<&'a Vec<u8>> for Message<'a> {
    fn from(data: &'a Vec<u8>) -> Self {
        Message::Binary(data)
    }
}

impl<'a> From<&'a PreparedMessage> for Message<'a> {
    fn from(prepared: &'a PreparedMessage) -> Self {
        Message::Prepared(prepared)
    }
}

/// A predicate over connections, run by each shard over its own connections.
pub type Selector<D> = Arc<dyn Fn(&ConnectionRef<'_, D>) -> bool + Send + Sync>;

/// Which connections a send reaches.
///
/// ```
/// use ringcast::Target;
/// let everyone: Target<()> = Target::All;
/// let subscribers: Target<()> = Target::topic("news");
/// let picked: Target<u32> = Target::select(|conn| *conn.data() > 3);
/// # let _ = (everyone, subscribers, picked);
/// ```
#[non_exhaustive]
pub enum Target<D> {
    /// Every open connection.
    All,
    /// Every open connection but one (the chat relay: everyone but the sender).
    AllExcept(ConnectionId),
    /// One connection.
    Connection(ConnectionId),
    /// The subscribers of a topic (see [`Connection::subscribe`](crate::Connection::subscribe)).
    Topic(Arc<str>),
    /// The connections a selector picks (the reference's `SendMessageTo`).
    Select(Selector<D>),
}

impl<D> Target<D> {
    /// The subscribers of `topic`.
    pub fn topic(topic: &str) -> Self {
        Target::Topic(topic.into())
    }

    /// The connections `selector` picks; it runs on each shard over that shard's
    /// connections.
    pub fn select(selector: impl Fn(&ConnectionRef<'_, D>) -> bool + Send + Sync + 'static) -> Self {
        Target::Select(Arc::new(selector))
    }

    /// Whether the target reaches `conn`, for targets resolved by a scan.
    pub(crate) fn matches(&self, conn: &ConnectionRef<'_, D>) -> bool {
        match self {
            Target::All => true,
            Target::AllExcept(id) => conn.id() != *id,
            Target::Connection(id) => conn.id() == *id,
            Target::Topic(topic) => conn.topics().any(|t| t == &**topic),
            Target::Select(selector) => selector(conn),
        }
    }
}

impl<D> Clone for Target<D> {
    fn clone(&self) -> Self {
        match self {
            Target::All => Target::All,
            Target::AllExcept(id) => Target::AllExcept(*id),
            Target::Connection(id) => Target::Connection(*id),
            Target::Topic(topic) => Target::Topic(topic.clone()),
            Target::Select(selector) => Target::Select(selector.clone()),
        }
    }
}

impl<D> fmt::Debug for Target<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::All => f.write_str("All"),
            Target::AllExcept(id) => write!(f, "AllExcept({id})"),
            Target::Connection(id) => write!(f, "Connection({id})"),
            Target::Topic(topic) => write!(f, "Topic({topic:?})"),
            Target::Select(_) => f.write_str("Select(..)"),
        }
    }
}
