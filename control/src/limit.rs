//! [`RateLimiter`]: the per-instance budgets of logins (per client address
//! and per user name) and of wrong API keys (per address). A leaf, so
//! `state` can hold the limiters without importing the modules that use them.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most `max` events per key per `window`, counted on this instance. The
/// map holds at most `capacity` keys; when it is full of active keys, a new
/// key is refused (an attacker spraying addresses or names cannot grow it).
pub struct RateLimiter<K> {
    max: usize,
    window: Duration,
    capacity: usize,
    events: Mutex<HashMap<K, Vec<Instant>>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(max: usize, window: Duration, capacity: usize) -> Self {
        RateLimiter {
            max,
            window,
            capacity,
            events: Mutex::new(HashMap::new()),
        }
    }

    /// Records an event; false if the key is over its budget.
    pub fn allow(&self, key: &K) -> bool {
        let now = Instant::now();
        let mut map = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(key) && map.len() >= self.capacity {
            // Forget idle keys; if none is idle, refuse the newcomer.
            let w = self.window;
            map.retain(|_, v| v.last().is_some_and(|t| now.duration_since(*t) < w));
            if map.len() >= self.capacity {
                return false;
            }
        }
        let v = map.entry(key.clone()).or_default();
        v.retain(|t| now.duration_since(*t) < self.window);
        if v.len() >= self.max {
            return false;
        }
        v.push(now);
        true
    }

    /// Whether the key is over its budget, without recording anything.
    pub fn blocked(&self, key: &K) -> bool {
        let now = Instant::now();
        let map = self.events.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).is_some_and(|v| {
            v.iter()
                .filter(|t| now.duration_since(**t) < self.window)
                .count()
                >= self.max
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn rate_limit_per_key_and_bounded() {
        let r = RateLimiter::new(3, Duration::from_secs(60), 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let c: IpAddr = "127.0.0.3".parse().unwrap();
        for _ in 0..3 {
            assert!(r.allow(&a));
        }
        assert!(!r.allow(&a));
        assert!(r.blocked(&a));
        assert!(r.allow(&b));
        // Full of active keys: a third is refused rather than stored.
        assert!(!r.allow(&c));
    }
}
