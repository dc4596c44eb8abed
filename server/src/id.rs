//! Connection identity: which shard owns a connection and which slot it holds there.

use std::fmt;

/// Identifies a connection server-wide: the shard that owns it, its slot in that shard's
/// table and a sequence number that makes reused slots distinct.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(u64);

impl ConnectionId {
    pub(crate) fn new(shard: usize, slot: usize, sequence: u32) -> Self {
        ConnectionId(((shard as u64) << 56) | ((slot as u64 & 0xff_ffff) << 32) | u64::from(sequence))
    }

    /// The index of the worker (shard) that owns the connection.
    pub fn shard(self) -> usize {
        (self.0 >> 56) as usize
    }

    /// The connection's slot in its shard's table.
    pub(crate) fn slot(self) -> usize {
        ((self.0 >> 32) & 0xff_ffff) as usize
    }

    /// The raw value, unique among the server's live connections.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.shard(), self.slot(), self.0 as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_pack_shard_slot_and_sequence() {
        let id = ConnectionId::new(3, 70_000, 9);
        assert_eq!((id.shard(), id.slot(), id.as_u64() as u32), (3, 70_000, 9));
        assert_eq!(id.to_string(), "3:70000:9");
        assert_ne!(ConnectionId::new(3, 70_000, 10), id);
    }
}
