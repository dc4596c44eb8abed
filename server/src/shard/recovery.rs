//! The shard's half of history recovery (see `api/recovery.rs`): a connection joins a
//! topic at its place in the stream's order, and tasks posted for one connection run.

use bytes::Bytes;

use super::Shard;
use crate::api::ConnectionTask;
use crate::conn::OutFrame;
use crate::handler::Handler;
use crate::id::ConnectionId;

impl<H: Handler, I> Shard<H, I> {
    /// Queues the messages `id` missed, then adds it to `topic`'s subscribers: every
    /// message of the stream this shard fans out from now on reaches it.
    pub(super) fn join(&mut self, id: ConnectionId, topic: &str, replay: Vec<Bytes>) {
        let key = id.slot();
        let Some(slot) = self.conns.get_mut(key).filter(|slot| slot.conn.id() == id) else { return };
        // Unsubscribed (or closing) while the join waited: nothing to do.
        if !slot.conn.is_open() || !slot.conn.is_subscribed(topic) {
            return;
        }
        for bytes in replay {
            if slot.conn.push_replay(OutFrame::single(bytes, self.view.now)).is_err() {
                break;
            }
            self.view.stats.messages_out.add(1);
        }
        self.view.topics.insert(topic, id);
        self.settle(key);
    }

    /// Runs a task posted for connection `id`, if it is still there.
    pub(super) fn run_task(&mut self, id: ConnectionId, task: ConnectionTask<H::Data>) {
        let key = id.slot();
        if !self.conns.get(key).is_some_and(|slot| slot.conn.id() == id && !slot.conn.is_finished()) {
            return;
        }
        self.dispatch(key, |_, conn| task(conn));
        self.settle(key);
    }
}
