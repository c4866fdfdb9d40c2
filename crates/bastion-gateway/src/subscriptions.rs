//! Resource subscriptions of one upstream server, counted per URI.
//!
//! An upstream connection is shared by every session, and a server keeps
//! one subscription per URI for it. So Bastion tells the server about a
//! URI's first subscriber and its last unsubscription only: one session
//! unsubscribing (or ending) never stops another's updates. The set
//! outlives the connection: a restarted server is subscribed again.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Who is subscribed to what: the server's own URI → session ids.
#[derive(Default)]
pub struct Subscriptions {
    map: Mutex<HashMap<String, HashSet<String>>>,
    /// Held while a change is told to the server, so that changes of one
    /// server happen one at a time.
    changing: tokio::sync::Mutex<()>,
}

impl Subscriptions {
    /// Waits for the other changes to finish; hold the guard while the
    /// server is told.
    pub async fn changing(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.changing.lock().await
    }

    /// Adds a subscriber; true when it is the URI's first (the server must
    /// be told).
    pub fn add(&self, uri: &str, session: &str) -> bool {
        let mut map = self.map.lock().expect("poisoned");
        let subscribers = map.entry(uri.to_string()).or_default();
        subscribers.insert(session.to_string()) && subscribers.len() == 1
    }

    /// Removes a subscriber; true when it was subscribed and was the last
    /// one (the server must be told).
    pub fn remove(&self, uri: &str, session: &str) -> bool {
        let mut map = self.map.lock().expect("poisoned");
        let Some(subscribers) = map.get_mut(uri) else { return false };
        if !subscribers.remove(session) {
            return false;
        }
        if subscribers.is_empty() {
            map.remove(uri);
            return true;
        }
        false
    }

    /// The URIs with at least one subscriber.
    pub fn uris(&self) -> Vec<String> {
        self.map.lock().expect("poisoned").keys().cloned().collect()
    }

    /// How many sessions are subscribed to a URI.
    pub fn count(&self, uri: &str) -> usize {
        self.map.lock().expect("poisoned").get(uri).map_or(0, HashSet::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_hears_the_first_subscription_and_the_last_unsubscription() {
        let subs = Subscriptions::default();
        assert!(subs.add("file:///a", "alice"));
        assert!(!subs.add("file:///a", "bob"));
        assert!(!subs.add("file:///a", "bob"));
        assert!(subs.add("file:///b", "bob"));
        assert_eq!(subs.count("file:///a"), 2);
        // bob leaving keeps alice's subscription upstream
        assert!(!subs.remove("file:///a", "bob"));
        // someone never subscribed cannot end it for alice
        assert!(!subs.remove("file:///a", "mallory"));
        let mut uris = subs.uris();
        uris.sort();
        assert_eq!(uris, ["file:///a", "file:///b"]);
        assert!(subs.remove("file:///a", "alice"));
        assert!(!subs.remove("file:///a", "alice"));
        assert_eq!(subs.uris(), ["file:///b"]);
    }
}
