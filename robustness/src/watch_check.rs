//! etcd's watch guarantees, checked over every watcher of a run, and the
//! revisions that writes and reads reported checked against the watch
//! streams.
//!
//! - **Ordered**: a watcher's event revisions never go down.
//! - **Unique**: no (revision, key) is delivered twice to one watcher.
//! - **Atomic**: all events of one revision (one txn) arrive in one response.
//! - **Reliable**: a watcher that delivered revision `m` delivered every
//!   revision from where it started up to `m` (no gap, also across resumes),
//!   and every watcher delivers the same events for a revision.
//! - **Acknowledged writes are in the stream**: a put, successful
//!   compare-and-swap or delete acknowledged with revision `r` appears at `r`
//!   with its key and value in every watcher that ran past `r`.
//! - **Reads match the stream**: a read answered at revision `R` saw, for
//!   each key, the newest event at or before `R` (value and mod_revision),
//!   so a multi-key read is one consistent snapshot.
//! - **Revisions are dense**: every revision between the first and the last
//!   one seen carries events (every write of the workload is under the
//!   watched prefix, and each write adds exactly one revision).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::history::{History, KvOp, KvRet, Outcome, WatchEvent};

#[derive(Debug, Default)]
pub struct WatchReport {
    pub watchers: usize,
    pub events: usize,
    /// Highest revision any watcher delivered.
    pub last_revision: i64,
    pub violations: Vec<String>,
}

/// Cap on violation lines kept per kind, so one broken run stays readable.
const MAX_LINES: usize = 20;

pub fn check(h: &History) -> WatchReport {
    let mut r = WatchReport {
        watchers: h.watches.len(),
        ..Default::default()
    };
    let bad = |r: &mut WatchReport, s: String| {
        if r.violations.len() < MAX_LINES * 4 {
            r.violations.push(s);
        }
    };
    // revision -> its events (sorted by key), as the first watcher saw them.
    let mut global: BTreeMap<i64, (usize, Vec<WatchEvent>)> = BTreeMap::new();
    // Per watcher: delivered revisions, and where it first started.
    let mut delivered: Vec<(usize, i64, HashSet<i64>, i64)> = Vec::new();
    for w in &h.watches {
        let mut last = 0i64;
        let mut seen: HashSet<(i64, String)> = HashSet::new();
        let mut revs: HashSet<i64> = HashSet::new();
        let mut response_of: HashMap<i64, usize> = HashMap::new();
        for (i, resp) in w.responses.iter().enumerate() {
            r.events += resp.events.len();
            let mut by_rev: BTreeMap<i64, Vec<WatchEvent>> = BTreeMap::new();
            for ev in &resp.events {
                if ev.revision < last {
                    bad(
                        &mut r,
                        format!(
                            "watcher {} (member {}): revision {} after {last} (not ordered)",
                            w.watcher, w.member, ev.revision
                        ),
                    );
                }
                last = last.max(ev.revision);
                if !seen.insert((ev.revision, ev.key.clone())) {
                    bad(
                        &mut r,
                        format!(
                            "watcher {} (member {}): {} at revision {} delivered twice",
                            w.watcher, w.member, ev.key, ev.revision
                        ),
                    );
                }
                if let Some(prev) = response_of.insert(ev.revision, i) {
                    if prev != i {
                        bad(
                            &mut r,
                            format!(
                                "watcher {} (member {}): revision {} split over two responses (not atomic)",
                                w.watcher, w.member, ev.revision
                            ),
                        );
                    }
                }
                revs.insert(ev.revision);
                by_rev.entry(ev.revision).or_default().push(ev.clone());
            }
            if resp.header_revision < last {
                bad(
                    &mut r,
                    format!(
                        "watcher {} (member {}): header revision {} behind its events ({last})",
                        w.watcher, w.member, resp.header_revision
                    ),
                );
            }
            for (rev, mut evs) in by_rev {
                evs.sort_by(|a, b| a.key.cmp(&b.key));
                match global.get(&rev) {
                    None => {
                        global.insert(rev, (w.watcher, evs));
                    }
                    Some((first, g)) if *g != evs => bad(
                        &mut r,
                        format!(
                            "revision {rev}: watcher {} (member {}) saw {evs:?}, watcher {first} saw {g:?}",
                            w.watcher, w.member
                        ),
                    ),
                    Some(_) => {}
                }
            }
        }
        let start = w.starts.first().copied().unwrap_or(1);
        delivered.push((w.watcher, w.member as i64, revs, start));
        r.last_revision = r.last_revision.max(last);
    }

    // Dense revisions.
    if let (Some((&lo, _)), Some((&hi, _))) = (global.first_key_value(), global.last_key_value()) {
        let missing: Vec<i64> = (lo..=hi).filter(|x| !global.contains_key(x)).collect();
        if !missing.is_empty() {
            bad(
                &mut r,
                format!(
                    "no watcher delivered revisions {:?}{} between {lo} and {hi}",
                    &missing[..missing.len().min(10)],
                    if missing.len() > 10 { " ..." } else { "" }
                ),
            );
        }
    }

    // Reliable: no gaps within a watcher's own span.
    for (watcher, member, revs, start) in &delivered {
        let Some(&max) = revs.iter().max() else {
            continue;
        };
        let gaps: Vec<i64> = global
            .range(*start..=max)
            .map(|(rev, _)| *rev)
            .filter(|rev| !revs.contains(rev))
            .collect();
        if !gaps.is_empty() {
            bad(
                &mut r,
                format!(
                    "watcher {watcher} (member {member}) skipped revisions {:?}{} (started at {start}, reached {max})",
                    &gaps[..gaps.len().min(10)],
                    if gaps.len() > 10 { " ..." } else { "" }
                ),
            );
        }
    }

    // Acknowledged writes and reads against the stream.
    let reached = delivered
        .iter()
        .filter_map(|(_, _, revs, _)| revs.iter().max().copied())
        .max()
        .unwrap_or(0);
    let mut write_lines = 0;
    for rec in &h.kv {
        let Outcome::Ok(ret) = &rec.outcome else {
            continue;
        };
        let expected: Vec<(i64, String, Option<String>)> = match (&rec.op, ret) {
            (KvOp::Put { key, value }, KvRet::Written { revision }) => {
                vec![(*revision, key.clone(), Some(value.clone()))]
            }
            (KvOp::MultiPut { writes }, KvRet::Written { revision }) => writes
                .iter()
                .map(|(k, v)| (*revision, k.clone(), Some(v.clone())))
                .collect(),
            (
                KvOp::Cas { key, new, .. },
                KvRet::Cas {
                    succeeded: true,
                    revision,
                },
            ) => vec![(*revision, key.clone(), Some(new.clone()))],
            (
                KvOp::Delete { key },
                KvRet::Delete {
                    deleted: true,
                    revision,
                },
            ) => vec![(*revision, key.clone(), None)],
            _ => continue,
        };
        for (rev, key, value) in expected {
            if rev > reached {
                continue;
            }
            let ok = global.get(&rev).is_some_and(|(_, evs)| {
                evs.iter()
                    .any(|e| e.key == key && e.value == value && e.revision == rev)
            });
            if !ok && write_lines < MAX_LINES {
                write_lines += 1;
                bad(
                    &mut r,
                    format!(
                        "client {} (member {}): {:?} answered {ret:?}, but the watch streams have {:?} at revision {rev}",
                        rec.client,
                        rec.member,
                        rec.op,
                        global.get(&rev).map(|(_, e)| e)
                    ),
                );
            }
        }
    }
    check_reads(h, &global, &mut r);
    r
}

/// Every read (single or multi-key) saw exactly the state the streams give
/// at the revision it answered with: the newest event of each key at or
/// before that revision, with its value and mod_revision (or none). This is
/// what makes a multi-key read atomic, and ties reads to revisions.
fn check_reads(h: &History, global: &BTreeMap<i64, (usize, Vec<WatchEvent>)>, r: &mut WatchReport) {
    let Some((&hi, _)) = global.last_key_value() else {
        return;
    };
    // key -> [(revision, value)] in revision order.
    let mut timeline: HashMap<&str, Vec<(i64, Option<&str>)>> = HashMap::new();
    for (rev, (_, evs)) in global {
        for e in evs {
            timeline
                .entry(e.key.as_str())
                .or_default()
                .push((*rev, e.value.as_deref()));
        }
    }
    let mut lines = 0;
    for rec in &h.kv {
        let Outcome::Ok(ret) = &rec.outcome else {
            continue;
        };
        let at = ret.revision();
        if at > hi {
            continue;
        }
        for (key, value, mod_rev) in ret.reads(&rec.op) {
            let state = timeline.get(key).and_then(|t| {
                let i = t.partition_point(|(rev, _)| *rev <= at);
                i.checked_sub(1).map(|i| t[i])
            });
            let want = match state {
                Some((rev, Some(v))) => (Some(v), rev),
                _ => (None, 0),
            };
            if (value, if value.is_some() { mod_rev } else { 0 }) != want && lines < MAX_LINES {
                lines += 1;
                r.violations.push(format!(
                    "client {} (member {}): {:?} at revision {at} saw {key} = {value:?} \
                     (mod_revision {mod_rev}), but the streams give {:?} (mod_revision {})",
                    rec.client, rec.member, rec.op, want.0, want.1
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{KvRecord, WatchRecord, WatchResponseRecord};

    fn ev(rev: i64, key: &str, value: Option<&str>) -> WatchEvent {
        WatchEvent {
            revision: rev,
            key: key.into(),
            value: value.map(Into::into),
        }
    }

    fn watcher(id: usize, responses: Vec<Vec<WatchEvent>>) -> WatchRecord {
        WatchRecord {
            watcher: id,
            member: id,
            starts: vec![1],
            responses: responses
                .into_iter()
                .map(|events| WatchResponseRecord {
                    received: 0,
                    header_revision: events.iter().map(|e| e.revision).max().unwrap_or(0),
                    events,
                })
                .collect(),
            errors: vec![],
        }
    }

    fn history(watches: Vec<WatchRecord>) -> History {
        History {
            watches,
            ..Default::default()
        }
    }

    #[test]
    fn identical_streams_pass() {
        let s = vec![
            vec![ev(2, "a", Some("1"))],
            vec![ev(3, "a", Some("2")), ev(3, "b", Some("3"))],
        ];
        let r = check(&history(vec![watcher(0, s.clone()), watcher(1, s)]));
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.events, 6);
    }

    #[test]
    fn a_skipped_revision_is_caught() {
        let full = vec![
            vec![ev(2, "a", Some("1"))],
            vec![ev(3, "a", Some("2"))],
            vec![ev(4, "a", Some("3"))],
        ];
        let skipping = vec![vec![ev(2, "a", Some("1"))], vec![ev(4, "a", Some("3"))]];
        let r = check(&history(vec![watcher(0, full), watcher(1, skipping)]));
        assert!(
            r.violations
                .iter()
                .any(|v| v.contains("skipped revisions [3]")),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn a_repeated_or_reordered_event_is_caught() {
        let dup = vec![vec![ev(2, "a", Some("1"))], vec![ev(2, "a", Some("1"))]];
        let r = check(&history(vec![watcher(0, dup)]));
        assert!(r.violations.iter().any(|v| v.contains("twice")));
        let back = vec![vec![ev(3, "a", Some("1"))], vec![ev(2, "b", Some("1"))]];
        let r = check(&history(vec![watcher(0, back)]));
        assert!(r.violations.iter().any(|v| v.contains("not ordered")));
    }

    #[test]
    fn a_txn_split_over_responses_is_caught() {
        let split = vec![vec![ev(2, "a", Some("1"))], vec![ev(2, "b", Some("1"))]];
        let r = check(&history(vec![watcher(0, split)]));
        assert!(r.violations.iter().any(|v| v.contains("not atomic")));
    }

    #[test]
    fn members_that_disagree_are_caught() {
        let a = vec![vec![ev(2, "a", Some("1"))]];
        let b = vec![vec![ev(2, "a", Some("other"))]];
        let r = check(&history(vec![watcher(0, a), watcher(1, b)]));
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
    }

    #[test]
    fn an_acknowledged_put_missing_from_the_stream_is_caught() {
        let s = vec![vec![ev(2, "a", Some("1"))], vec![ev(3, "a", Some("2"))]];
        let mut h = history(vec![watcher(0, s)]);
        h.kv.push(KvRecord {
            client: 0,
            member: 0,
            op: KvOp::Put {
                key: "a".into(),
                value: "lost".into(),
            },
            invoke: 0,
            complete: 1,
            outcome: Outcome::Ok(KvRet::Written { revision: 3 }),
        });
        let r = check(&h);
        assert!(
            r.violations.iter().any(|v| v.contains("revision 3")),
            "{:?}",
            r.violations
        );
    }
}

#[cfg(test)]
mod read_tests {
    use super::*;
    use crate::history::{KvRecord, WatchRecord, WatchResponseRecord};

    fn history(reads: Vec<(KvOp, KvRet)>) -> History {
        let ev = |rev, key: &str, v: Option<&str>| WatchEvent {
            revision: rev,
            key: key.into(),
            value: v.map(Into::into),
        };
        let events = vec![
            vec![ev(2, "a", Some("a1"))],
            vec![ev(3, "a", Some("a2")), ev(3, "b", Some("b2"))],
            vec![ev(4, "a", None)],
        ];
        History {
            watches: vec![WatchRecord {
                watcher: 0,
                member: 0,
                starts: vec![1],
                responses: events
                    .into_iter()
                    .map(|events| WatchResponseRecord {
                        received: 0,
                        header_revision: events[0].revision,
                        events,
                    })
                    .collect(),
                errors: vec![],
            }],
            kv: reads
                .into_iter()
                .map(|(op, ret)| KvRecord {
                    client: 0,
                    member: 0,
                    op,
                    invoke: 0,
                    complete: 1,
                    outcome: Outcome::Ok(ret),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn multi(values: Vec<(Option<&str>, i64)>, revision: i64) -> (KvOp, KvRet) {
        (
            KvOp::MultiGet {
                keys: vec!["a".into(), "b".into()],
            },
            KvRet::MultiGet {
                values: values
                    .into_iter()
                    .map(|(v, m)| (v.map(Into::into), m))
                    .collect(),
                revision,
            },
        )
    }

    #[test]
    fn reads_that_match_the_state_at_their_revision_pass() {
        let h = history(vec![
            multi(vec![(Some("a1"), 2), (None, 0)], 2),
            multi(vec![(Some("a2"), 3), (Some("b2"), 3)], 3),
            multi(vec![(None, 0), (Some("b2"), 3)], 4),
        ]);
        let r = check(&h);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
    }

    #[test]
    fn a_torn_multi_key_read_is_caught() {
        // a from revision 3, b from before it: no revision had that state.
        let h = history(vec![multi(vec![(Some("a2"), 3), (None, 0)], 3)]);
        assert_eq!(check(&h).violations.len(), 1);
    }

    #[test]
    fn a_read_behind_its_own_revision_is_caught() {
        let get = (
            KvOp::Get { key: "a".into() },
            KvRet::Get {
                value: Some("a1".into()),
                mod_revision: 2,
                revision: 3,
            },
        );
        assert_eq!(check(&history(vec![get])).violations.len(), 1);
    }
}
