//! What the service knows about each authenticated connection, kept beside the server's
//! connection table rather than in it: a connection's slot holds one byte of service
//! data (its role), so an identity there would cost every connection, authenticated or
//! not. Entries are keyed by connection id, striped by worker (only the worker that owns
//! a connection touches its entry, so the locks are uncontended), and removed when the
//! connection ends. Deadlines (first-message auth, token expiry) are kept in one ordered
//! set that a thread sleeps on until the earliest.

use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use foldhash::HashMap;
use ringcast::ConnectionId;

use super::token::{Grant, Identity};

/// One connection's authentication state.
#[derive(Debug, Default)]
pub struct Session {
    /// Who it is; `None` while it still has to send its token.
    pub identity: Option<Arc<Identity>>,
    /// When it must have authenticated, or when its token expires.
    pub deadline: Option<Instant>,
    /// Channels subscription tokens granted it.
    pub grants: Vec<Grant>,
}

const STRIPES: usize = 64;

/// Sessions by connection id.
pub struct Sessions {
    stripes: Box<[Mutex<HashMap<ConnectionId, Session>>]>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions { stripes: (0..STRIPES).map(|_| Mutex::default()).collect() }
    }
}

impl Sessions {
    fn stripe(&self, id: ConnectionId) -> MutexGuard<'_, HashMap<ConnectionId, Session>> {
        self.stripes[id.shard() % STRIPES].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the session of `id`, if it has one.
    pub fn with<R>(&self, id: ConnectionId, f: impl FnOnce(Option<&mut Session>) -> R) -> R {
        f(self.stripe(id).get_mut(&id))
    }

    /// Runs `f` on the session of `id`, made first if it has none.
    pub fn upsert<R>(&self, id: ConnectionId, f: impl FnOnce(&mut Session) -> R) -> R {
        f(self.stripe(id).entry(id).or_default())
    }

    /// Gives `id` a session (replacing any).
    pub fn insert(&self, id: ConnectionId, session: Session) {
        self.stripe(id).insert(id, session);
    }

    /// Takes the session of `id` away.
    pub fn remove(&self, id: ConnectionId) -> Option<Session> {
        self.stripe(id).remove(&id)
    }

    /// How many connections have sessions.
    pub fn len(&self) -> usize {
        self.stripes.iter().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len()).sum()
    }
}

/// Connection deadlines, earliest first.
#[derive(Default)]
pub struct Deadlines {
    due: Mutex<BTreeSet<(Instant, ConnectionId)>>,
    wake: Condvar,
}

impl Deadlines {
    fn lock(&self) -> MutexGuard<'_, BTreeSet<(Instant, ConnectionId)>> {
        self.due.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `id` is due at `at`.
    pub fn insert(&self, at: Instant, id: ConnectionId) {
        let mut due = self.lock();
        let earliest = due.first().is_none_or(|first| at < first.0);
        due.insert((at, id));
        if earliest {
            self.wake.notify_one();
        }
    }

    /// Forgets that `id` was due at `at`.
    pub fn remove(&self, at: Instant, id: ConnectionId) {
        self.lock().remove(&(at, id));
    }

    /// How many deadlines are pending.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Forever: hands each deadline to `on_due` once it has passed, and calls `tick`
    /// about every `period`.
    pub fn run(&self, period: Duration, mut on_due: impl FnMut(ConnectionId), mut tick: impl FnMut()) -> ! {
        let mut next_tick = Instant::now() + period;
        loop {
            let mut ready = Vec::new();
            {
                let mut due = self.lock();
                let now = Instant::now();
                while let Some(&(at, id)) = due.first() {
                    if at > now {
                        break;
                    }
                    due.pop_first();
                    ready.push(id);
                }
                if ready.is_empty() {
                    let until = due.first().map_or(next_tick, |first| first.0.min(next_tick));
                    let wait = until.saturating_duration_since(now);
                    if !wait.is_zero() {
                        drop(self.wake.wait_timeout(due, wait).unwrap_or_else(|e| e.into_inner()));
                    }
                }
            }
            for id in ready {
                on_due(id);
            }
            if Instant::now() >= next_tick {
                tick();
                next_tick = Instant::now() + period;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn deadlines_fire_in_order_and_removed_ones_never() {
        let deadlines = Arc::new(Deadlines::default());
        // Connection ids cannot be made outside the server; the test borrows a real one.
        let ids: Vec<ConnectionId> = real_ids(3);
        let now = Instant::now();
        deadlines.insert(now + Duration::from_millis(80), ids[0]);
        deadlines.insert(now + Duration::from_millis(40), ids[1]);
        deadlines.insert(now + Duration::from_millis(60), ids[2]);
        deadlines.remove(now + Duration::from_millis(60), ids[2]);
        assert_eq!(deadlines.len(), 2);
        let (tx, rx) = mpsc::channel();
        let runner = deadlines.clone();
        std::thread::spawn(move || runner.run(Duration::from_secs(1), move |id| tx.send(id).unwrap(), || {}));
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(ids[1]));
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(ids[0]));
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        // An earlier deadline wakes the sleeping thread.
        deadlines.insert(Instant::now() + Duration::from_secs(3600), ids[0]);
        deadlines.insert(Instant::now(), ids[2]);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(ids[2]));
    }

    /// Ids of connections to a throwaway server (the only way to get `ConnectionId`s).
    fn real_ids(n: usize) -> Vec<ConnectionId> {
        use ringcast::{Handler, Server};
        use std::net::SocketAddr;
        struct Ids(Mutex<mpsc::Sender<ConnectionId>>);
        impl Handler for Ids {
            type Data = ();
            fn on_connect(&self, id: ConnectionId, _: SocketAddr) {
                let _ = self.0.lock().unwrap().send(id);
            }
        }
        let (tx, rx) = mpsc::channel();
        let server = Server::builder()
            .bind([127, 0, 0, 1].into())
            .port(0)
            .workers(1)
            .start(Ids(Mutex::new(tx)))
            .expect("start a server");
        let sockets: Vec<_> = (0..n).map(|_| std::net::TcpStream::connect(server.local_addr()).unwrap()).collect();
        let ids = (0..n).map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap()).collect();
        drop(sockets);
        server.stop();
        ids
    }
}
