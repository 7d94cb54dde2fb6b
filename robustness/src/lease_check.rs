//! Lease safety: the cluster never takes away a lease its holder may still
//! rely on.
//!
//! A holder that got TTL `t` from a grant or keep-alive it sent at time `s`
//! may rely on the lease until `s + t` (it cannot know when the server
//! renewed, so it counts from the send; that is the lock-holder's rule, and
//! any earlier expiry lets a second client take the lock). It stops relying
//! on it when it sends a revoke. The cluster takes the lease away when the
//! deletion of the lease's key reaches a watcher; the arrival time is an
//! upper bound on when the delete committed. So a violation is: some watcher
//! received the delete of the lease's key before the holder's deadline, and
//! before the holder sent any revoke. That covers "a keep-alive acknowledged
//! after the lease expired" too: its deadline is later still.

use std::collections::HashMap;

use crate::history::{History, LeaseOp, Micros};

#[derive(Debug, Default)]
pub struct LeaseReport {
    pub leases: usize,
    pub keep_alives: usize,
    /// Leases whose key deletion some watcher saw.
    pub expired_or_revoked: usize,
    pub violations: Vec<String>,
}

pub fn check(h: &History) -> LeaseReport {
    let mut r = LeaseReport::default();
    // key -> earliest arrival of its delete at any watcher.
    let mut deleted_at: HashMap<&str, Micros> = HashMap::new();
    for w in &h.watches {
        for resp in &w.responses {
            for ev in resp.events.iter().filter(|e| e.value.is_none()) {
                let t = deleted_at.entry(ev.key.as_str()).or_insert(resp.received);
                *t = (*t).min(resp.received);
            }
        }
    }
    struct Lease<'a> {
        key: Option<&'a str>,
        /// (deadline, the send time and TTL that set it)
        deadline: Option<(Micros, Micros, i64)>,
        revoked: Option<Micros>,
    }
    let mut leases: HashMap<i64, Lease> = HashMap::new();
    for rec in &h.leases {
        let l = leases.entry(rec.lease).or_insert(Lease {
            key: None,
            deadline: None,
            revoked: None,
        });
        let ttl = match &rec.op {
            LeaseOp::Grant { ttl, key } => {
                l.key = Some(key.as_str());
                *ttl
            }
            LeaseOp::KeepAlive { ttl } => {
                r.keep_alives += 1;
                *ttl
            }
            LeaseOp::Revoke { .. } => {
                l.revoked = Some(l.revoked.map_or(rec.invoke, |t| t.min(rec.invoke)));
                continue;
            }
        };
        if ttl > 0 {
            let until = rec.invoke + ttl as Micros * 1_000_000;
            if l.deadline.is_none_or(|(d, _, _)| until > d) {
                l.deadline = Some((until, rec.invoke, ttl));
            }
        }
    }
    r.leases = leases.len();
    for (id, l) in &leases {
        let Some(key) = l.key else { continue };
        let Some(&gone) = deleted_at.get(key) else {
            continue;
        };
        r.expired_or_revoked += 1;
        let Some((deadline, sent, ttl)) = l.deadline else {
            continue;
        };
        let relied_until = l.revoked.map_or(deadline, |rv| rv.min(deadline));
        if gone < relied_until {
            r.violations.push(format!(
                "lease {id:x} (key {key}): its key was deleted by {gone} µs, but a grant or \
                 keep-alive sent at {sent} µs answered TTL {ttl} s (holder relies on it until \
                 {deadline} µs){}",
                l.revoked
                    .map(|t| format!("; first revoke sent at {t} µs"))
                    .unwrap_or_default()
            ));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{LeaseRecord, WatchEvent, WatchRecord, WatchResponseRecord};

    fn lease(lease: i64, op: LeaseOp, invoke: Micros) -> LeaseRecord {
        LeaseRecord {
            client: 0,
            member: 0,
            lease,
            op,
            invoke,
            complete: invoke + 1000,
        }
    }

    fn deleted(key: &str, at: Micros) -> WatchRecord {
        WatchRecord {
            watcher: 0,
            member: 0,
            starts: vec![1],
            responses: vec![WatchResponseRecord {
                received: at,
                header_revision: 9,
                events: vec![WatchEvent {
                    revision: 9,
                    key: key.into(),
                    value: None,
                }],
            }],
            errors: vec![],
        }
    }

    fn grant(id: i64, at: Micros) -> LeaseRecord {
        lease(
            id,
            LeaseOp::Grant {
                ttl: 2,
                key: "/l".into(),
            },
            at,
        )
    }

    #[test]
    fn expiry_after_the_deadline_is_fine() {
        let h = History {
            leases: vec![
                grant(1, 0),
                lease(1, LeaseOp::KeepAlive { ttl: 2 }, 1_000_000),
            ],
            watches: vec![deleted("/l", 3_500_000)],
            ..Default::default()
        };
        let r = check(&h);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.expired_or_revoked, 1);
    }

    #[test]
    fn a_keep_alive_the_cluster_did_not_honour_is_caught() {
        let h = History {
            leases: vec![
                grant(1, 0),
                lease(1, LeaseOp::KeepAlive { ttl: 2 }, 1_000_000),
            ],
            watches: vec![deleted("/l", 2_500_000)],
            ..Default::default()
        };
        assert_eq!(check(&h).violations.len(), 1);
    }

    #[test]
    fn a_keep_alive_after_the_delete_is_caught() {
        let h = History {
            leases: vec![
                grant(1, 0),
                lease(1, LeaseOp::KeepAlive { ttl: 2 }, 5_000_000),
            ],
            watches: vec![deleted("/l", 2_100_000)],
            ..Default::default()
        };
        assert_eq!(check(&h).violations.len(), 1);
    }

    #[test]
    fn a_revoked_lease_may_go_at_once() {
        let h = History {
            leases: vec![grant(1, 0), lease(1, LeaseOp::Revoke { ok: true }, 500_000)],
            watches: vec![deleted("/l", 600_000)],
            ..Default::default()
        };
        assert!(check(&h).violations.is_empty());
    }

    #[test]
    fn a_keep_alive_answering_zero_promises_nothing() {
        let h = History {
            leases: vec![
                grant(1, 0),
                lease(1, LeaseOp::KeepAlive { ttl: 0 }, 2_500_000),
            ],
            watches: vec![deleted("/l", 2_100_000)],
            ..Default::default()
        };
        assert!(check(&h).violations.is_empty());
    }
}
