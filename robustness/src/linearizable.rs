//! Linearizability of the key-value history, one key at a time.
//!
//! Each key is a register (a value, or absent). Linearizability is
//! compositional (Herlihy & Wing), so a history is linearizable iff each
//! key's sub-history is; checking keys apart keeps the search small. A
//! `MultiPut` is a put on each of its keys at one point, which is consistent
//! with splitting it.
//!
//! The search is Wing & Gong's, with Lowe's memoisation, as porcupine does it:
//! walk the call/return events in time order; at a call, try to linearize
//! that operation now (the model must accept its result), remembering
//! (linearized set, state) pairs already explored; at a return whose call is
//! not linearized yet, backtrack. The history is linearizable iff every
//! operation gets linearized.
//!
//! Outcomes: a failed operation certainly did not happen and is left out; a
//! read without an answer tells nothing and is left out; a mutation with an
//! unknown outcome may have happened at any point after its call, or never:
//! it gets a return time after everything else, where linearizing it cannot
//! constrain any other operation (so "never" is covered too).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::history::{KvOp, KvRecord, KvRet, Micros, Outcome};

/// One key's operation in the register model.
#[derive(Clone, Debug)]
enum RegOp {
    /// Put: the value becomes `Some(v)`.
    Write(u32),
    /// Get: the value read (`None`: absent).
    Read(Option<u32>),
    /// Compare-and-swap; `succeeded` is `None` when the outcome is unknown.
    Cas {
        expect: Option<u32>,
        new: u32,
        succeeded: Option<bool>,
    },
    /// Delete; `deleted` is `None` when the outcome is unknown.
    Delete { deleted: Option<bool> },
}

impl RegOp {
    /// The state after this op from `state`, or `None` if the op's answer
    /// is impossible in that state.
    fn step(&self, state: Option<u32>) -> Option<Option<u32>> {
        match *self {
            RegOp::Write(v) => Some(Some(v)),
            RegOp::Read(v) => (v == state).then_some(state),
            RegOp::Cas {
                expect,
                new,
                succeeded,
            } => {
                let matches = state == expect;
                match succeeded {
                    Some(s) if s != matches => None,
                    _ => Some(if matches { Some(new) } else { state }),
                }
            }
            RegOp::Delete { deleted } => match deleted {
                Some(d) if d != state.is_some() => None,
                _ => Some(None),
            },
        }
    }
}

#[derive(Clone, Debug)]
struct Op {
    reg: RegOp,
    call: Micros,
    /// `Micros::MAX`: outcome unknown.
    ret: Micros,
    /// Index into the run's `kv` records, for the report.
    record: usize,
}

/// The checker's verdict over a whole history.
#[derive(Debug, Default)]
pub struct LinReport {
    pub keys: usize,
    pub ops: usize,
    /// One line per key that is not linearizable.
    pub violations: Vec<String>,
    /// Keys whose search ran out of its step budget (neither proven nor refuted).
    pub inconclusive: Vec<String>,
}

/// Steps one key's search may take before it gives up (inconclusive).
const STEP_BUDGET: u64 = 20_000_000;

/// Checks every key of `records`.
pub fn check(records: &[KvRecord]) -> LinReport {
    let mut values: HashMap<String, u32> = HashMap::new();
    let mut intern = |v: &str| {
        let n = values.len() as u32;
        *values.entry(v.to_string()).or_insert(n)
    };
    let mut by_key: BTreeMap<String, Vec<Op>> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        let (ret, known) = match &r.outcome {
            Outcome::Ok(ret) => (r.complete, Some(ret)),
            Outcome::Failed(_) => continue,
            Outcome::Unknown(_) => (Micros::MAX, None),
        };
        let mut push = |key: &str, reg: RegOp| {
            by_key.entry(key.to_string()).or_default().push(Op {
                reg,
                call: r.invoke,
                ret,
                record: i,
            })
        };
        match (&r.op, known) {
            (KvOp::Put { key, value }, _) => push(key, RegOp::Write(intern(value))),
            (KvOp::MultiPut { writes }, _) => {
                for (k, v) in writes {
                    push(k, RegOp::Write(intern(v)));
                }
            }
            (KvOp::Get { .. } | KvOp::MultiGet { .. }, Some(ret)) => {
                // A multi-key read is a read of each key at one point; that
                // the keys agree with each other is checked against the
                // watch streams (`watch_check`).
                for (key, value, _) in ret.reads(&r.op) {
                    let v = value.map(&mut intern);
                    push(key, RegOp::Read(v))
                }
            }
            // A read with no answer says nothing.
            (KvOp::Get { .. } | KvOp::MultiGet { .. }, None) => {}
            (KvOp::Cas { key, expect, new }, ret) => {
                let succeeded = match ret {
                    Some(KvRet::Cas { succeeded, .. }) => Some(*succeeded),
                    _ => None,
                };
                let reg = RegOp::Cas {
                    expect: expect.as_deref().map(&mut intern),
                    new: intern(new),
                    succeeded,
                };
                push(key, reg)
            }
            (KvOp::Delete { key }, ret) => {
                let deleted = match ret {
                    Some(KvRet::Delete { deleted, .. }) => Some(*deleted),
                    _ => None,
                };
                push(key, RegOp::Delete { deleted })
            }
        }
    }
    let mut report = LinReport {
        keys: by_key.len(),
        ..Default::default()
    };
    for (key, ops) in by_key {
        report.ops += ops.len();
        match search(&ops) {
            Search::Linearizable => {}
            Search::Inconclusive => report
                .inconclusive
                .push(format!("{key}: {} ops, search budget exhausted", ops.len())),
            Search::Violation { linearized, stuck } => {
                let names: HashMap<u32, &str> =
                    values.iter().map(|(k, v)| (*v, k.as_str())).collect();
                report
                    .violations
                    .push(describe(&key, &ops, linearized, &stuck, records, &names));
            }
        }
    }
    report
}

enum Search {
    Linearizable,
    Inconclusive,
    /// The deepest linearization found, and the ops that could not follow it.
    Violation {
        linearized: usize,
        stuck: Vec<usize>,
    },
}

/// Wing & Gong's search with Lowe's cache over one key's operations.
fn search(ops: &[Op]) -> Search {
    let n = ops.len();
    if n == 0 {
        return Search::Linearizable;
    }
    // Events: (time, is_return, op). Calls sort before returns at equal
    // times, so operations that touch at one instant count as concurrent.
    let mut events: Vec<(Micros, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.call, false, i));
        events.push((op.ret, true, i));
    }
    events.sort_unstable();
    // A doubly linked list over the events, with a head sentinel at index 0.
    let len = events.len() + 1;
    let mut next: Vec<usize> = (1..=len).collect();
    let mut prev: Vec<usize> = (0..len).map(|i| i.wrapping_sub(1)).collect();
    next[len - 1] = usize::MAX;
    let mut ret_of = vec![0usize; n];
    for (pos, &(_, is_ret, op)) in events.iter().enumerate() {
        if is_ret {
            ret_of[op] = pos + 1;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
        let (p, nx) = (prev[e], next[e]);
        next[p] = nx;
        if nx != usize::MAX {
            prev[nx] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
        let (p, nx) = (prev[e], next[e]);
        next[p] = e;
        if nx != usize::MAX {
            prev[nx] = e;
        }
    };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Option<u32>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<u32>)> = Vec::new(); // (call event, state before)
    let mut state: Option<u32> = None;
    let mut best = 0usize;
    let mut stuck: Vec<usize> = Vec::new();
    let mut steps = 0u64;
    let mut e = next[0];
    while next[0] != usize::MAX {
        steps += 1;
        if steps > STEP_BUDGET {
            return Search::Inconclusive;
        }
        if e == usize::MAX {
            // Cannot happen (a return event always ends the walk first); if
            // it did, the search proved nothing.
            return Search::Inconclusive;
        }
        let (_, is_ret, op) = events[e - 1];
        if !is_ret {
            if let Some(after) = ops[op].reg.step(state) {
                linearized[op / 64] |= 1 << (op % 64);
                if cache.insert((linearized.clone(), after)) {
                    stack.push((e, state));
                    state = after;
                    unlink(&mut next, &mut prev, e);
                    unlink(&mut next, &mut prev, ret_of[op]);
                    e = next[0];
                    continue;
                }
                linearized[op / 64] &= !(1 << (op % 64));
            }
            e = next[e];
        } else {
            // The earliest pending return: its op must be linearized by now.
            if stack.len() >= best {
                if stack.len() > best {
                    stuck.clear();
                }
                best = stack.len();
                if !stuck.contains(&op) {
                    stuck.push(op);
                }
            }
            let Some((call, before)) = stack.pop() else {
                return Search::Violation {
                    linearized: best,
                    stuck,
                };
            };
            let (_, _, cop) = events[call - 1];
            linearized[cop / 64] &= !(1 << (cop % 64));
            state = before;
            relink(&mut next, &mut prev, ret_of[cop]);
            relink(&mut next, &mut prev, call);
            e = next[call];
        }
    }
    Search::Linearizable
}

fn describe(
    key: &str,
    ops: &[Op],
    linearized: usize,
    stuck: &[usize],
    records: &[KvRecord],
    names: &HashMap<u32, &str>,
) -> String {
    let show = |o: &Op| {
        let r = &records[o.record];
        let ret = if o.ret == Micros::MAX {
            "?".to_string()
        } else {
            o.ret.to_string()
        };
        let reg = match &o.reg {
            RegOp::Write(v) => format!("write {}", names.get(v).unwrap_or(&"?")),
            RegOp::Read(v) => format!(
                "read {}",
                v.and_then(|v| names.get(&v).copied()).unwrap_or("<absent>")
            ),
            other => format!("{other:?}"),
        };
        format!(
            "  client {} (member {}) [{}, {}] {reg} -> {:?}",
            r.client, r.member, o.call, ret, r.outcome
        )
    };
    let mut s = format!(
        "key {key}: not linearizable ({} ops; at most {linearized} linearized in order); \
         no order could place:\n",
        ops.len()
    );
    for &i in stuck.iter().take(4) {
        s.push_str(&show(&ops[i]));
        s.push('\n');
        // The operations overlapping it, for context.
        let (c, r) = (ops[i].call, ops[i].ret);
        let around: Vec<String> = ops
            .iter()
            .enumerate()
            .filter(|(j, o)| {
                *j != i && o.call <= r.saturating_add(200_000) && o.ret >= c.saturating_sub(200_000)
            })
            .take(12)
            .map(|(_, o)| show(o))
            .collect();
        if !around.is_empty() {
            s.push_str("  around it:\n");
            s.push_str(&around.join("\n"));
            s.push('\n');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(op: KvOp, invoke: Micros, complete: Micros, outcome: Outcome<KvRet>) -> KvRecord {
        KvRecord {
            client: 0,
            member: 0,
            op,
            invoke,
            complete,
            outcome,
        }
    }

    fn put(v: &str, a: Micros, b: Micros) -> KvRecord {
        rec(
            KvOp::Put {
                key: "k".into(),
                value: v.into(),
            },
            a,
            b,
            Outcome::Ok(KvRet::Written { revision: 0 }),
        )
    }

    fn get(v: Option<&str>, a: Micros, b: Micros) -> KvRecord {
        rec(
            KvOp::Get { key: "k".into() },
            a,
            b,
            Outcome::Ok(KvRet::Get {
                value: v.map(Into::into),
                mod_revision: 0,
                revision: 0,
            }),
        )
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![put("a", 0, 10), get(Some("a"), 20, 30), put("b", 40, 50)];
        let r = check(&h);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.ops, 3);
    }

    #[test]
    fn stale_read_after_a_completed_write_is_caught() {
        // b completed before the read started: reading a is stale.
        let h = vec![put("a", 0, 10), put("b", 20, 30), get(Some("a"), 40, 50)];
        let r = check(&h);
        assert_eq!(r.violations.len(), 1, "{r:?}");
        assert!(r.violations[0].contains("not linearizable"));
    }

    #[test]
    fn concurrent_read_may_see_either_value() {
        let h = vec![put("a", 0, 10), put("b", 20, 60), get(Some("a"), 30, 40)];
        assert!(check(&h).violations.is_empty());
        let h = vec![put("a", 0, 10), put("b", 20, 60), get(Some("b"), 30, 40)];
        assert!(check(&h).violations.is_empty());
    }

    #[test]
    fn reading_a_value_never_written_is_caught() {
        let h = vec![get(Some("x"), 0, 10)];
        assert_eq!(check(&h).violations.len(), 1);
    }

    #[test]
    fn a_failed_write_never_happened() {
        let mut w = put("b", 20, 30);
        w.outcome = Outcome::Failed("refused".into());
        let h = vec![put("a", 0, 10), w, get(Some("b"), 40, 50)];
        assert_eq!(check(&h).violations.len(), 1);
    }

    #[test]
    fn an_unknown_write_may_have_happened_or_not() {
        let mut w = put("b", 20, 30);
        w.outcome = Outcome::Unknown("timeout".into());
        // Seen later...
        let h = vec![put("a", 0, 10), w.clone(), get(Some("b"), 40, 50)];
        assert!(check(&h).violations.is_empty());
        // ... or never.
        let h = vec![put("a", 0, 10), w.clone(), get(Some("a"), 40, 50)];
        assert!(check(&h).violations.is_empty());
        // But not before it was sent.
        let h = vec![put("a", 0, 10), get(Some("b"), 12, 15), w];
        assert_eq!(check(&h).violations.len(), 1);
    }

    #[test]
    fn an_unknown_write_cannot_take_effect_twice() {
        let mut w = put("b", 20, 30);
        w.outcome = Outcome::Unknown("timeout".into());
        let h = vec![
            put("a", 0, 10),
            w,
            get(Some("b"), 40, 50),
            put("c", 60, 70),
            get(Some("b"), 80, 90),
        ];
        assert_eq!(check(&h).violations.len(), 1);
    }

    #[test]
    fn compare_and_swap_results_must_fit_the_state() {
        let cas = |expect: Option<&str>, new: &str, ok: bool, a, b| {
            rec(
                KvOp::Cas {
                    key: "k".into(),
                    expect: expect.map(Into::into),
                    new: new.into(),
                },
                a,
                b,
                Outcome::Ok(KvRet::Cas {
                    succeeded: ok,
                    revision: 0,
                }),
            )
        };
        // create-if-absent succeeds once only.
        let h = vec![cas(None, "a", true, 0, 10), cas(None, "b", true, 20, 30)];
        assert_eq!(check(&h).violations.len(), 1);
        let h = vec![
            cas(None, "a", true, 0, 10),
            cas(None, "b", false, 20, 30),
            cas(Some("a"), "c", true, 40, 50),
            get(Some("c"), 60, 70),
        ];
        assert!(check(&h).violations.is_empty());
    }

    #[test]
    fn deletes_report_whether_the_key_existed() {
        let del = |deleted: bool, a, b| {
            rec(
                KvOp::Delete { key: "k".into() },
                a,
                b,
                Outcome::Ok(KvRet::Delete {
                    deleted,
                    revision: 0,
                }),
            )
        };
        let h = vec![put("a", 0, 10), del(true, 20, 30), get(None, 40, 50)];
        assert!(check(&h).violations.is_empty());
        let h = vec![put("a", 0, 10), del(false, 20, 30)];
        assert_eq!(check(&h).violations.len(), 1);
    }

    #[test]
    fn keys_are_checked_apart() {
        let mut other = put("z", 0, 10);
        other.op = KvOp::Put {
            key: "other".into(),
            value: "z".into(),
        };
        let h = vec![other, put("a", 0, 10), get(Some("a"), 20, 30)];
        let r = check(&h);
        assert_eq!(r.keys, 2);
        assert!(r.violations.is_empty());
    }

    #[test]
    fn many_concurrent_clients_stay_fast() {
        // 6 clients, 400 ops each on one key, heavily overlapping; each
        // read returns the value of the latest completed write.
        let mut h = Vec::new();
        let mut t = 0;
        let mut last = None::<String>;
        for i in 0..2400u64 {
            let a = t;
            let b = t + 25;
            t += 10;
            if i % 3 == 0 {
                let v = format!("v{i}");
                h.push(put(&v, a, b));
                last = Some(v);
            } else {
                // Overlaps the previous write, so either value would do; the
                // newest one keeps it correct.
                h.push(get(last.as_deref(), a + 20, b + 20));
            }
        }
        let r = check(&h);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert!(r.inconclusive.is_empty());
    }
}
