//! History in Redis, for `--cluster`: offsets assigned once per stream cluster-wide,
//! messages kept where any node can read them.
//!
//! Per stream (a backbone channel `C`: `ringcast:broadcast`, `ringcast:topic:<name>`):
//! - `C:meta`, a hash: `epoch` (16 hex digits) and `offset` (the last one assigned);
//! - `C:log`, a Redis Stream whose entry IDs *are* the offsets (`<offset>-0`), with the
//!   fields `b` (binary: 0/1), `t` (publish time, Unix ms) and `d` (the message),
//!   trimmed with `XADD … MAXLEN ~ N` and expiring after the history's age bound of
//!   silence.
//!
//! One Lua script publishes: it creates the epoch if `C:meta` is missing (a new stream,
//! or Redis lost its data: the old log is deleted with it), takes the next offset with
//! `HINCRBY`, appends with `XADD`, and `PUBLISH`es the message with its epoch and offset
//! to `C`. Redis runs scripts one at a time and delivers a channel's messages to each
//! subscriber in publish order, so every node receives a stream in offset order with no
//! coordination of its own — the property the server library's history needs on each
//! node. Why a counter and not Redis's own stream IDs: those are time-based
//! (`<ms>-<seq>`), not consecutive, so a client could not tell a gap from a quiet
//! moment; with `<offset>-0` IDs, `XRANGE C:log <N+1>-0 +` is exactly "everything after
//! offset N".
//!
//! A second script reads `C:meta` and the log after an offset in one step, so that the
//! epoch and the entries agree.

use ringcast::{Epoch, Position};

use crate::cluster::Scope;

/// Publishes one message (see the module's docs). KEYS: meta, log. ARGV: candidate epoch,
/// max length, binary flag, body, channel, now (ms), log expiry (ms).
pub const PUBLISH_SCRIPT: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], offset .. '-0', 'b', ARGV[3], 't', ARGV[6], 'd', ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
redis.call('PUBLISH', ARGV[5], 'RH' .. ARGV[3] .. epoch .. offset .. '\n' .. ARGV[4])
return offset
";

/// Reads a stream after an offset. KEYS: meta, log. ARGV: first offset wanted, count.
/// Returns `{}` for an unknown stream, else `{epoch, last offset, entries}`.
pub const FETCH_SCRIPT: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then return {} end
local last = redis.call('HGET', KEYS[1], 'offset')
return {epoch, last, redis.call('XRANGE', KEYS[2], ARGV[1] .. '-0', '+', 'COUNT', ARGV[2])}
";

/// The history bounds applied in Redis.
#[derive(Debug, Clone, Copy)]
pub struct RedisHistory {
    /// Approximate maximum length of each stream's log.
    pub max_messages: usize,
    /// The log expires after this long without a publish (ms).
    pub ttl_ms: u64,
}

/// A stream as Redis has it after the offset asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedStream {
    pub epoch: Epoch,
    /// The last offset assigned.
    pub last: u64,
    /// The entries from the offset asked for on, oldest first (the log may have been
    /// trimmed past it).
    pub entries: Vec<FetchedEntry>,
}

/// `None`: Redis does not know the stream.
pub type Fetched = Option<FetchedStream>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedEntry {
    pub offset: u64,
    pub binary: bool,
    /// Publish time, Unix ms.
    pub at_ms: u64,
    pub body: Vec<u8>,
}

/// A subscription that needs Redis's history: the subscribe loop makes sure it receives
/// the stream's channel, then fetches from `from` and calls `finish` (on the cluster
/// thread, in order with the stream's messages).
pub struct RecoverRequest {
    pub scope: Scope,
    /// The first offset to fetch (the subscriber's last one: its entry is fetched too,
    /// to learn the epoch even when nothing followed).
    pub from: u64,
    pub finish: Box<dyn FnOnce(Result<Fetched, String>) + Send>,
}

pub fn meta_key(channel: &str) -> String {
    format!("{channel}:meta")
}

pub fn log_key(channel: &str) -> String {
    format!("{channel}:log")
}

/// Decodes a history message published by [`PUBLISH_SCRIPT`]: `RH`, the binary flag
/// (`0`/`1`), 16 hex digits of epoch, the offset in decimal, `\n`, the body.
pub fn decode_message(payload: &[u8]) -> Option<(bool, Position, &[u8])> {
    let rest = payload.strip_prefix(b"RH")?;
    let binary = match rest.first()? {
        b'0' => false,
        b'1' => true,
        _ => return None,
    };
    let epoch = std::str::from_utf8(rest.get(1..17)?).ok()?.parse::<Epoch>().ok()?;
    let after = rest.get(17..)?;
    let newline = after.iter().position(|&b| b == b'\n')?;
    let offset = std::str::from_utf8(&after[..newline]).ok()?.parse().ok()?;
    Some((binary, Position { epoch, offset }, &after[newline + 1..]))
}

/// Parses [`FETCH_SCRIPT`]'s answer.
pub fn parse_fetched(value: redis::Value) -> Result<Fetched, String> {
    use redis::Value;
    let bad = |what: &str| format!("unexpected reply from Redis: {what}");
    let Value::Array(parts) = value else { return Err(bad("not an array")) };
    if parts.is_empty() {
        return Ok(None);
    }
    let [epoch, last, entries] = <[Value; 3]>::try_from(parts).map_err(|_| bad("not 3 parts"))?;
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    };
    let epoch = text(&epoch).and_then(|e| e.parse::<Epoch>().ok()).ok_or_else(|| bad("epoch"))?;
    let last = text(&last).and_then(|l| l.parse().ok()).ok_or_else(|| bad("offset"))?;
    let Value::Array(entries) = entries else { return Err(bad("entries")) };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(pair) = entry else { return Err(bad("entry")) };
        let [id, fields] = <[Value; 2]>::try_from(pair).map_err(|_| bad("entry shape"))?;
        let id = text(&id).ok_or_else(|| bad("entry id"))?;
        let offset = id.split('-').next().and_then(|o| o.parse().ok()).ok_or_else(|| bad("entry id"))?;
        let Value::Array(fields) = fields else { return Err(bad("fields")) };
        let mut entry = FetchedEntry { offset, binary: false, at_ms: 0, body: Vec::new() };
        for pair in fields.chunks(2) {
            let [name, value] = pair else { return Err(bad("fields")) };
            match text(name).as_deref() {
                Some("b") => entry.binary = text(value).as_deref() == Some("1"),
                Some("t") => entry.at_ms = text(value).and_then(|t| t.parse().ok()).unwrap_or(0),
                Some("d") => {
                    if let Value::BulkString(bytes) = value {
                        entry.body = bytes.clone();
                    }
                }
                _ => {}
            }
        }
        out.push(entry);
    }
    Ok(Some(FetchedStream { epoch, last, entries: out }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_messages_decode_and_foreign_ones_do_not() {
        let payload = b"RH1000000000000abcd42\n\x00body";
        let (binary, at, body) = decode_message(payload).unwrap();
        assert!(binary);
        assert_eq!(at, Position { epoch: Epoch::from_u64(0xabcd), offset: 42 });
        assert_eq!(body, b"\x00body");
        assert_eq!(decode_message(b"R\x01\x00rest"), None);
        assert_eq!(decode_message(b"RH2000000000000abcd42\nx"), None);
        assert_eq!(decode_message(b"RH0000000000000abcd"), None);
    }

    #[test]
    fn fetched_streams_parse() {
        use redis::Value::{Array, BulkString};
        let entry = |id: &str, body: &[u8]| {
            Array(vec![
                BulkString(id.into()),
                Array(vec![
                    BulkString(b"b".to_vec()),
                    BulkString(b"0".to_vec()),
                    BulkString(b"t".to_vec()),
                    BulkString(b"1700".to_vec()),
                    BulkString(b"d".to_vec()),
                    BulkString(body.to_vec()),
                ]),
            ])
        };
        let value = Array(vec![
            BulkString(b"00000000000000ff".to_vec()),
            BulkString(b"8".to_vec()),
            Array(vec![entry("7-0", b"seven"), entry("8-0", b"eight")]),
        ]);
        let fetched = parse_fetched(value).unwrap().unwrap();
        assert_eq!((fetched.epoch, fetched.last), (Epoch::from_u64(255), 8));
        assert_eq!(fetched.entries[1], FetchedEntry { offset: 8, binary: false, at_ms: 1700, body: b"eight".to_vec() });
        assert_eq!(parse_fetched(Array(vec![])), Ok(None));
        assert!(parse_fetched(BulkString(vec![])).is_err());
    }
}
