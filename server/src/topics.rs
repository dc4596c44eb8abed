//! A shard's topic index: topic → the shard's subscribed connections.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use crate::id::ConnectionId;

/// Which of a shard's connections subscribe to each topic. The topic names are shared
/// (`Rc<str>`) with the connections' own subscription lists.
#[derive(Debug, Default)]
pub(crate) struct TopicIndex {
    members: HashMap<Rc<str>, HashSet<ConnectionId>>,
}

impl TopicIndex {
    /// Adds `id` to `topic`; returns the shared name to keep on the connection.
    pub(crate) fn insert(&mut self, topic: &str, id: ConnectionId) -> Rc<str> {
        let key = match self.members.get_key_value(topic) {
            Some((key, _)) => key.clone(),
            None => Rc::from(topic),
        };
        self.members.entry(key.clone()).or_default().insert(id);
        key
    }

    /// Removes `id` from `topic`, forgetting topics nobody subscribes to.
    pub(crate) fn remove(&mut self, topic: &str, id: ConnectionId) {
        if let Some(members) = self.members.get_mut(topic) {
            members.remove(&id);
            if members.is_empty() {
                self.members.remove(topic);
            }
        }
    }

    /// The subscribers of `topic` on this shard.
    pub(crate) fn members(&self, topic: &str) -> impl Iterator<Item = ConnectionId> + '_ {
        self.members.get(topic).into_iter().flatten().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_share_names_and_vanish_when_empty() {
        let mut index = TopicIndex::default();
        let (a, b) = (ConnectionId::new(0, 1, 1), ConnectionId::new(0, 2, 1));
        let name_a = index.insert("news", a);
        let name_b = index.insert("news", b);
        assert!(Rc::ptr_eq(&name_a, &name_b));
        assert_eq!(index.members("news").count(), 2);
        index.remove("news", a);
        index.remove("news", b);
        assert!(index.members.is_empty());
        assert_eq!(index.members("news").count(), 0);
    }
}
