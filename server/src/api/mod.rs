//! The public face of a server: the handles handlers and other threads use.

pub(crate) mod broadcaster;
pub(crate) mod connection;
mod http;
pub(crate) mod recovery;
pub(crate) mod target;

pub use broadcaster::Broadcaster;
pub use connection::{Connection, ConnectionRef};
pub use http::{HttpRequest, HttpResponse};
pub use recovery::{ConnectionTask, HistoryUsage};
pub use target::{Message, Selector, Target};
