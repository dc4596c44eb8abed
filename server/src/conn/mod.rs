//! One connection, sans-IO: its protocol state machine and its send queue.

mod machine;
mod queue;
#[cfg(test)]
mod tests;

pub(crate) use machine::{Conn, Event, Overflow, Refused};
pub(crate) use queue::{Delivered, OutFrame, Outbound, Outgoing};
