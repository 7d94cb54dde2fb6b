//! Lease deadlines: when each lease expires, in the leader's memory only
//! (as etcd's lessor), for the term of one leadership. What a lease call
//! and the expiry loop do with them is in [`crate::lease`].
//!
//! Costs do not grow with the number of leases: a renewal is O(log n); a
//! tick of the expiry loop looks only at leases whose next action is due
//! (an ordered set keyed by that time), and learns of grants and revokes as
//! a feed of changes from the state machine ([`crate::mvcc::LeaseFeed`])
//! instead of reading every lease. Only the first tick of a leadership reads
//! them all, to start every TTL afresh.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a proposed revoke may take before it is proposed again.
const REVOKE_RETRY: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct Lessor {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The term of the leadership the deadlines belong to; `None` while
    /// this member does not lead. Deadlines of an earlier leadership are
    /// never used: a member that leads again starts every TTL afresh.
    term: Option<u64>,
    leases: HashMap<i64, Deadline>,
    /// `(next, id)` of every lease: the next time it needs looking at.
    order: BTreeSet<(Instant, i64)>,
}

#[derive(Clone, Copy)]
struct Deadline {
    /// When the lease expires.
    at: Instant,
    /// When to look at it next: `at`, or after a revoke was proposed, when
    /// to propose it again.
    next: Instant,
}

impl Inner {
    fn set(&mut self, id: i64, at: Instant) {
        if let Some(old) = self.leases.insert(id, Deadline { at, next: at }) {
            self.order.remove(&(old.next, id));
        }
        self.order.insert((at, id));
    }

    fn remove(&mut self, id: i64) {
        if let Some(old) = self.leases.remove(&id) {
            self.order.remove(&(old.next, id));
        }
    }
}

fn ttl(secs: i64) -> Duration {
    Duration::from_secs(secs.max(0) as u64)
}

impl Lessor {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Renews `id` for `secs` seconds from now, unless its deadline has
    /// already passed (then its revoke is due, and `false` says so).
    pub fn renew(&self, id: i64, secs: i64) -> bool {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.leases.get(&id).is_some_and(|d| d.at <= now) {
            return false;
        }
        inner.set(id, now + ttl(secs));
        true
    }

    /// Whether `id`'s deadline has passed (its revoke is due or in flight).
    pub fn expired(&self, id: i64) -> bool {
        self.lock()
            .leases
            .get(&id)
            .is_some_and(|d| d.at <= Instant::now())
    }

    pub fn remaining(&self, id: i64) -> Option<Duration> {
        self.lock()
            .leases
            .get(&id)
            .map(|d| d.at.saturating_duration_since(Instant::now()))
    }

    /// Whether the deadlines belong to leadership in `term`.
    pub fn synced_for(&self, term: u64) -> bool {
        self.lock().term == Some(term)
    }

    /// Forgets every deadline: this member no longer leads.
    pub fn forget(&self) {
        let mut inner = self.lock();
        if inner.term.take().is_some() {
            inner.leases.clear();
            inner.order.clear();
        }
    }

    /// Starts leadership in `term`: every lease (id, TTL) gets its full TTL
    /// from now. O(n), once per leadership.
    pub fn start_term(&self, term: u64, leases: &[(i64, i64)]) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.leases.clear();
        inner.order.clear();
        inner.term = Some(term);
        for (id, secs) in leases {
            inner.set(*id, now + ttl(*secs));
        }
    }

    /// Applies grants (`Some(ttl)`: a full TTL from now, unless the lease is
    /// known already) and revokes (`None`) the state machine applied since
    /// the last call.
    pub fn apply_changes(&self, changes: &[(i64, Option<i64>)]) {
        let now = Instant::now();
        let mut inner = self.lock();
        for (id, change) in changes {
            match change {
                Some(secs) if !inner.leases.contains_key(id) => inner.set(*id, now + ttl(*secs)),
                Some(_) => {}
                None => inner.remove(*id),
            }
        }
    }

    /// Expired leases whose revoke is due: never proposed, or proposed more
    /// than [`REVOKE_RETRY`] ago without taking effect. Looks only at those.
    pub fn due(&self) -> Vec<i64> {
        let now = Instant::now();
        let mut inner = self.lock();
        let mut out = Vec::new();
        while let Some(&(next, id)) = inner.order.first() {
            if next > now {
                break;
            }
            inner.order.pop_first();
            if let Some(d) = inner.leases.get_mut(&id) {
                d.next = now + REVOKE_RETRY;
                inner.order.insert((now + REVOKE_RETRY, id));
                out.push(id);
            }
        }
        out
    }

    /// How many leases have a deadline (tests only).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().leases.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines() {
        let l = Lessor::default();
        l.start_term(7, &[(1, 0), (2, 100)]);
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
        l.apply_changes(&[(1, None)]);
        assert!(l.remaining(1).is_none());
        assert!(l.remaining(2).unwrap() > Duration::from_secs(90));
        // A grant seen after a renewal does not shorten it.
        l.apply_changes(&[(2, Some(1)), (3, Some(50))]);
        assert!(l.remaining(2).unwrap() > Duration::from_secs(90));
        assert!(l.remaining(3).unwrap() > Duration::from_secs(40));
        assert_eq!(l.len(), 2);
        // Leadership lost, then won again: nothing of the old deadlines stays.
        l.forget();
        assert!(!l.synced_for(7) && l.remaining(2).is_none());
        l.start_term(9, &[(1, 0)]);
        assert!(
            l.due().len() == 1,
            "a revoke in flight before is proposed again"
        );
    }

    #[test]
    fn a_tick_looks_only_at_what_is_due() {
        let l = Lessor::default();
        let many: Vec<(i64, i64)> = (0..100_000).map(|i| (i, 60)).collect();
        l.start_term(1, &many);
        l.apply_changes(&[(100_001, Some(0))]);
        // The ordered set hands out the one expired lease without visiting
        // the others.
        assert_eq!(l.due(), vec![100_001]);
        assert!(l.due().is_empty());
        assert_eq!(l.len(), 100_001);
    }
}
