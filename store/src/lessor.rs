//! Lease deadlines: when each lease expires, in the leader's memory only
//! (as etcd's lessor), for the term of one leadership. What a lease call
//! and the expiry loop do with them is in [`crate::lease`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Lessor {
    deadlines: Mutex<HashMap<i64, Instant>>,
    /// Leases whose revoke has been proposed, and when to try again.
    revoking: Mutex<HashMap<i64, Instant>>,
    /// The term of the leadership the deadlines belong to; `None` while
    /// this member does not lead. Deadlines of an earlier leadership are
    /// never used: a member that leads again starts every TTL afresh.
    term: Mutex<Option<u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Lessor {
    /// Renews `id` for `ttl` seconds from now, unless its deadline has
    /// already passed (then its revoke is due, and `false` says so).
    pub fn renew(&self, id: i64, ttl: i64) -> bool {
        let now = Instant::now();
        let mut d = lock(&self.deadlines);
        if d.get(&id).is_some_and(|deadline| *deadline <= now) {
            return false;
        }
        d.insert(id, now + Duration::from_secs(ttl as u64));
        true
    }

    /// Whether `id`'s deadline has passed (its revoke is due or in flight).
    pub fn expired(&self, id: i64) -> bool {
        lock(&self.deadlines)
            .get(&id)
            .is_some_and(|d| *d <= Instant::now())
    }

    pub fn remaining(&self, id: i64) -> Option<Duration> {
        lock(&self.deadlines)
            .get(&id)
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Whether the deadlines belong to leadership in `term`.
    pub fn synced_for(&self, term: u64) -> bool {
        *lock(&self.term) == Some(term)
    }

    /// Forgets every deadline: this member no longer leads.
    pub fn forget(&self) {
        let mut term = lock(&self.term);
        if term.take().is_some() {
            lock(&self.deadlines).clear();
            lock(&self.revoking).clear();
        }
    }

    /// Aligns deadlines with the replicated leases of leadership in `term`.
    /// The first sync of a term restarts every lease's full TTL.
    pub fn sync(&self, term: u64, leases: &[(i64, i64)]) {
        let now = Instant::now();
        let mut t = lock(&self.term);
        let mut d = lock(&self.deadlines);
        if *t != Some(term) {
            d.clear();
            *t = Some(term);
        }
        d.retain(|id, _| leases.iter().any(|(l, _)| l == id));
        for (id, ttl) in leases {
            d.entry(*id)
                .or_insert(now + Duration::from_secs(*ttl as u64));
        }
        lock(&self.revoking).retain(|id, _| d.contains_key(id));
    }

    /// Expired leases not already being revoked.
    pub fn due(&self) -> Vec<i64> {
        let now = Instant::now();
        let d = lock(&self.deadlines);
        let mut revoking = lock(&self.revoking);
        let mut out = Vec::new();
        for (id, deadline) in d.iter() {
            if *deadline <= now && revoking.get(id).is_none_or(|retry| *retry <= now) {
                revoking.insert(*id, now + Duration::from_secs(2));
                out.push(*id);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines() {
        let l = Lessor::default();
        l.sync(7, &[(1, 0), (2, 100)]);
        assert!(l.synced_for(7) && !l.synced_for(8));
        let exp = l.due();
        assert_eq!(exp, vec![1]);
        assert!(
            l.due().is_empty(),
            "a revoke in flight is not proposed twice"
        );
        assert!(l.expired(1));
        assert!(!l.renew(1, 100), "an expired lease is not renewed");
        assert!(l.renew(2, 100));
        l.sync(7, &[(2, 100)]);
        assert!(l.remaining(1).is_none());
        assert!(l.remaining(2).unwrap() > Duration::from_secs(90));
        // Leadership lost, then won again: nothing of the old deadlines stays.
        l.forget();
        assert!(!l.synced_for(7) && l.remaining(2).is_none());
        l.sync(9, &[(1, 0)]);
        assert!(
            l.due().len() == 1,
            "a revoke in flight before is proposed again"
        );
    }
}
