//! Subscriber counts per topic (pub/sub mode), for the dashboard and the cluster.
//!
//! The server library keeps topic membership inside each worker's connection table and
//! does not count it; the service sees every subscribe, unsubscribe and disconnect, so it
//! counts here. Subscribing is rare next to publishing, so one lock is enough.

use std::collections::HashMap;
use std::sync::Mutex;

/// Topic → local subscriptions.
#[derive(Debug, Default)]
pub struct TopicCounts {
    counts: Mutex<HashMap<String, u64>>,
}

impl TopicCounts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One more subscriber of `topic`. `first` runs when it is the only one, under the
    /// same lock, so that "first subscriber" and "last one gone" never swap order.
    pub fn subscribed(&self, topic: &str, first: impl FnOnce()) {
        let mut counts = self.lock();
        let count = counts.entry(topic.to_owned()).or_insert(0);
        *count += 1;
        if *count == 1 {
            first();
        }
    }

    /// One subscriber of `topic` fewer. `last` runs when none is left.
    pub fn unsubscribed(&self, topic: &str, last: impl FnOnce()) {
        let mut counts = self.lock();
        if let Some(count) = counts.get_mut(topic) {
            *count -= 1;
            if *count == 0 {
                counts.remove(topic);
                last();
            }
        }
    }

    /// Every topic with at least one subscriber.
    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// How many topics have subscribers, and the `n` with the most (most first, then by name).
    pub fn busiest(&self, n: usize) -> (usize, Vec<(String, u64)>) {
        let counts = self.lock();
        let mut top: Vec<(String, u64)> = counts.iter().map(|(t, c)| (t.clone(), *c)).collect();
        drop(counts);
        top.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let topics = top.len();
        top.truncate(n);
        (topics, top)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_and_last_subscriber_are_reported_and_the_busiest_come_first() {
        let topics = TopicCounts::default();
        let mut firsts = Vec::new();
        for topic in ["a", "b", "b", "c", "c", "c"] {
            topics.subscribed(topic, || firsts.push(topic));
        }
        assert_eq!(firsts, ["a", "b", "c"]);
        assert_eq!(topics.busiest(2), (3, vec![("c".into(), 3), ("b".into(), 2)]));
        let mut lasts = Vec::new();
        for topic in ["c", "a", "c", "unknown"] {
            topics.unsubscribed(topic, || lasts.push(topic));
        }
        assert_eq!(lasts, ["a"]);
        assert_eq!(topics.busiest(10), (2, vec![("b".into(), 2), ("c".into(), 1)]));
        let mut names = topics.names();
        names.sort();
        assert_eq!(names, ["b", "c"]);
    }
}
