//! Resource subscriptions, counted per server and URI.
//!
//! An upstream connection is shared by every session, and a server keeps
//! one subscription per URI for it. So Bastion tells the server about a
//! URI's first subscriber and its last unsubscription only: one session
//! unsubscribing (or ending) never stops another's updates.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Who is subscribed to what: (server, the server's own URI) → session ids.
#[derive(Default)]
pub struct Subscriptions {
    map: Mutex<HashMap<(String, String), HashSet<String>>>,
}

impl Subscriptions {
    /// Adds a subscriber; true when it is the URI's first (the server must
    /// be told).
    pub fn add(&self, server: &str, uri: &str, session: &str) -> bool {
        let mut map = self.map.lock().expect("poisoned");
        let subscribers = map.entry((server.to_string(), uri.to_string())).or_default();
        subscribers.insert(session.to_string()) && subscribers.len() == 1
    }

    /// Removes a subscriber; true when it was subscribed and was the last
    /// one (the server must be told).
    pub fn remove(&self, server: &str, uri: &str, session: &str) -> bool {
        let mut map = self.map.lock().expect("poisoned");
        let key = (server.to_string(), uri.to_string());
        let Some(subscribers) = map.get_mut(&key) else { return false };
        if !subscribers.remove(session) {
            return false;
        }
        if subscribers.is_empty() {
            map.remove(&key);
            return true;
        }
        false
    }

    /// Forgets every subscription to a server (its connection was replaced
    /// or removed).
    pub fn forget_server(&self, server: &str) {
        self.map.lock().expect("poisoned").retain(|(s, _), _| s != server);
    }

    /// How many sessions are subscribed to a URI.
    pub fn count(&self, server: &str, uri: &str) -> usize {
        self.map.lock().expect("poisoned").get(&(server.to_string(), uri.to_string())).map_or(0, HashSet::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_hears_the_first_subscription_and_the_last_unsubscription() {
        let subs = Subscriptions::default();
        assert!(subs.add("s", "file:///a", "alice"));
        assert!(!subs.add("s", "file:///a", "bob"));
        assert!(!subs.add("s", "file:///a", "bob"));
        assert!(subs.add("s", "file:///b", "bob"));
        assert!(subs.add("t", "file:///a", "bob"));
        assert_eq!(subs.count("s", "file:///a"), 2);
        // bob leaving keeps alice's subscription upstream
        assert!(!subs.remove("s", "file:///a", "bob"));
        // someone never subscribed cannot end it for alice
        assert!(!subs.remove("s", "file:///a", "mallory"));
        assert!(subs.remove("s", "file:///a", "alice"));
        assert!(!subs.remove("s", "file:///a", "alice"));
        subs.forget_server("t");
        assert_eq!(subs.count("t", "file:///a"), 0);
        assert_eq!(subs.count("s", "file:///b"), 1);
    }
}
