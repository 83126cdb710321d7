//! What a router asks of the core in one call each (SPEC 10): the default selector's pass over every
//! candidate rank (overlaps from the index, Dynamo's cost rule, the lowest cost), and an event-plane
//! envelope applied when it is the next event of its rank (`RankGate`).

use std::collections::HashMap;

use crate::index::{ApplyOutcome, IndexAccess, Match};
use crate::msgpack::{Head, Reader};
use crate::wire::{decode_router_events_envelope, EventData};

/// The per-candidate columns `select_best` reads, one value per candidate rank, the ranks in
/// ascending (worker_id, dp_rank) without repeats.
pub struct Candidates<'a> {
    pub worker_ids: &'a [u64],
    pub dp_ranks: &'a [u32],
    /// Each rank's decode blocks: its reported active decode blocks plus the router's routed blocks.
    pub decode_blocks: &'a [f64],
}

/// What `select_best` writes per candidate: its overlap in blocks (0 when `matches` does not name
/// it), its tree size when scored (else 0), and its cost.
pub struct Scored<'a> {
    pub overlap: &'a mut [f64],
    pub tree_size: &'a mut [f64],
    pub cost: &'a mut [f64],
}

/// Scores every candidate from `matches` (any order; a match of a rank that is not a candidate is
/// left out) and applies the cost rule `overlap_weight × max(0, request_blocks − overlap) + decode`.
/// Returns the candidate of the lowest cost, the first of equal ones; None without candidates. The
/// candidate count is the shortest of the columns.
pub fn select_best(
    matches: &[Match],
    request_blocks: u32,
    overlap_weight: f64,
    c: &Candidates,
    out: Scored,
) -> Option<usize> {
    let n = c
        .worker_ids
        .len()
        .min(c.dp_ranks.len())
        .min(c.decode_blocks.len())
        .min(out.overlap.len())
        .min(out.tree_size.len())
        .min(out.cost.len());
    let (ids, ranks) = (&c.worker_ids[..n], &c.dp_ranks[..n]);
    out.overlap[..n].fill(0.0);
    out.tree_size[..n].fill(0.0);
    // matches come in ascending order: each is looked for from where the last one was found
    let mut at = 0;
    for m in matches {
        at = seek(ids, ranks, at, m.worker_id, m.dp_rank);
        if at < n && ids[at] == m.worker_id && ranks[at] == m.dp_rank {
            out.overlap[at] = f64::from(m.score);
            out.tree_size[at] = m.tree_size as f64;
        }
    }
    let mut best = None::<usize>;
    for i in 0..n {
        let prefill = f64::from(request_blocks.saturating_sub(out.overlap[i] as u32));
        let cost = overlap_weight * prefill + c.decode_blocks[i];
        out.cost[i] = cost;
        if best.is_none_or(|b| cost < out.cost[b]) {
            best = Some(i);
        }
    }
    best
}

/// The first place whose (worker, rank) is not below the key (the columns ascend): a few steps on from
/// `from` when the key is just ahead of it (matches and candidates both ascend), else a binary search.
fn seek(ids: &[u64], ranks: &[u32], from: usize, worker_id: u64, dp_rank: u32) -> usize {
    let below = |i: usize| (ids[i], ranks[i]) < (worker_id, dp_rank);
    let n = ids.len();
    if from <= n && (from == 0 || below(from - 1)) {
        for i in from..n.min(from + 8) {
            if !below(i) {
                return i;
            }
        }
    }
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if below(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// `RankGate::apply` returned this: the envelope holds one event (its header is in the output), not
/// applied, because its rank is not armed or the id is not the one due.
pub const GATE_PASS: u32 = 15;
/// `RankGate::apply` returned this: not one event-plane RouterEvent the gate reads (bytes it cannot
/// decode, or a payload that is not one RouterEvent map); nothing applied, nothing written.
pub const GATE_OTHER: u32 = 16;
/// Values `RankGate::apply` writes.
pub const GATE_OUT_LEN: usize = 6;

#[derive(Debug, Clone, Copy)]
struct Armed {
    next: u64,
    seen: bool,
}

/// Per (worker, dp rank) the event id due next, for ranks the router follows live: an envelope
/// holding that rank's due event is applied in the same call that decodes it.
#[derive(Debug, Default)]
pub struct RankGate {
    ranks: HashMap<(u64, u32), Armed>,
}

impl RankGate {
    pub fn new() -> Self {
        Self::default()
    }

    /// The rank's next event (`next`) is to be applied on arrival.
    pub fn arm(&mut self, worker_id: u64, dp_rank: u32, next: u64) {
        self.ranks
            .insert((worker_id, dp_rank), Armed { next, seen: false });
    }

    /// The rank's events go to the caller again; returns the id that was due (None: not armed).
    pub fn disarm(&mut self, worker_id: u64, dp_rank: u32) -> Option<u64> {
        self.ranks.remove(&(worker_id, dp_rank)).map(|a| a.next)
    }

    pub fn remove_worker(&mut self, worker_id: u64) {
        self.ranks.retain(|&(w, _), _| w != worker_id);
    }

    /// Workers with an event applied by `apply` since the last call, ascending, without repeats.
    pub fn take_seen(&mut self) -> Vec<u64> {
        let mut out: Vec<u64> = Vec::new();
        for (&(w, _), a) in self.ranks.iter_mut() {
            if a.seen {
                a.seen = false;
                out.push(w);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Decodes an event-plane envelope. `out` receives [worker_id, event_id, dp_rank, kind (0
    /// stored, 1 removed, 2 cleared), armed (0/1), the id due when armed]. When the rank is armed and
    /// the event is the one due, it is applied and `outcome + 5 × kind` returned; else GATE_PASS
    /// (nothing applied) or GATE_OTHER (nothing written).
    pub fn apply<I: IndexAccess>(
        &mut self,
        index: &mut I,
        payload: &[u8],
        out: &mut [u64; GATE_OUT_LEN],
    ) -> u32 {
        if !payload_is_map(payload) {
            return GATE_OTHER;
        }
        let Ok(mut events) = decode_router_events_envelope(payload) else {
            return GATE_OTHER;
        };
        let (Some((ev, meta)), true) = (events.pop(), events.is_empty()) else {
            return GATE_OTHER;
        };
        let kind: u32 = match ev.data {
            EventData::Stored { .. } => 0,
            EventData::Removed { .. } => 1,
            EventData::Cleared => 2,
        };
        let armed = self.ranks.get_mut(&(ev.worker_id, ev.dp_rank));
        *out = [
            ev.worker_id,
            ev.event_id,
            u64::from(ev.dp_rank),
            u64::from(kind),
            u64::from(armed.is_some()),
            armed.as_ref().map_or(0, |a| a.next),
        ];
        match armed {
            Some(a) if a.next == ev.event_id => {
                a.next = a.next.wrapping_add(1);
                a.seen = true;
                let outcome: ApplyOutcome = index.apply_with_meta(&ev, meta);
                outcome as u32 + 5 * kind
            }
            _ => GATE_PASS,
        }
    }
}

/// Whether the envelope's `payload` bin holds a msgpack map (one Dynamo 1.0 RouterEvent) rather than
/// an array of them; false for bytes that are not an envelope.
fn payload_is_map(bytes: &[u8]) -> bool {
    let mut r = Reader::new(bytes);
    let Ok(Head::Map(n)) = r.head(1) else {
        return false;
    };
    // the last `payload` bin counts, as for the envelope's decoder
    let mut first = None;
    for _ in 0..n {
        let (Ok(key), Ok(value)) = (r.head(2), r.head(2)) else {
            return false;
        };
        if let (Head::Str(b"payload"), Head::Bin(b)) = (key, value) {
            first = b.first().copied();
        }
    }
    matches!(first, Some(0x80..=0x8f | 0xde | 0xdf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(worker_id: u64, dp_rank: u32, score: u32, tree_size: u64) -> Match {
        Match {
            worker_id,
            dp_rank,
            score,
            tree_size,
        }
    }

    #[test]
    fn lowest_cost_first_of_equals_and_unknown_matches_left_out() {
        let ids = [1, 1, 5, u64::MAX];
        let ranks = [0, 3, 0, 0];
        let decode = [4.0, 0.0, 2.0, 0.0];
        let (mut o, mut t, mut c) = ([9.0; 4], [9.0; 4], [0.0; 4]);
        let matches = [m(u64::MAX, 0, 2, 7), m(1, 3, 1, 3), m(2, 0, 8, 8)];
        let best = select_best(
            &matches,
            4,
            1.5,
            &Candidates {
                worker_ids: &ids,
                dp_ranks: &ranks,
                decode_blocks: &decode,
            },
            Scored {
                overlap: &mut o,
                tree_size: &mut t,
                cost: &mut c,
            },
        );
        assert_eq!(o, [0.0, 1.0, 0.0, 2.0]);
        assert_eq!(t, [0.0, 3.0, 0.0, 7.0]);
        // 1.5 × 4 + 4, 1.5 × 3, 1.5 × 4 + 2, 1.5 × 2
        assert_eq!(c, [10.0, 4.5, 8.0, 3.0]);
        assert_eq!(best, Some(3));
        let best = select_best(
            &[],
            0,
            1.0,
            &Candidates {
                worker_ids: &ids,
                dp_ranks: &ranks,
                decode_blocks: &[0.0; 4],
            },
            Scored {
                overlap: &mut o,
                tree_size: &mut t,
                cost: &mut c,
            },
        );
        assert_eq!(best, Some(0));
        let none = Candidates {
            worker_ids: &[],
            dp_ranks: &[],
            decode_blocks: &[],
        };
        let empty = Scored {
            overlap: &mut [],
            tree_size: &mut [],
            cost: &mut [],
        };
        assert_eq!(select_best(&matches, 3, 1.0, &none, empty), None);
    }

    #[test]
    fn the_gate_applies_only_the_due_event_of_an_armed_rank() {
        use crate::index::RadixIndex;
        use crate::wire::{write_envelope, write_router_event_msgpack, RouterEvent, StoredBlock};
        let envelope = |ev: &RouterEvent| {
            let mut payload = Vec::new();
            write_router_event_msgpack(&mut payload, ev);
            let mut out = Vec::new();
            write_envelope(&mut out, 1, 1, 0, "kv-events", &payload);
            out
        };
        let stored = |id| RouterEvent {
            worker_id: 7,
            event_id: id,
            dp_rank: 1,
            data: EventData::Stored {
                parent_hash: None,
                blocks: vec![StoredBlock {
                    block_hash: 100 + id,
                    tokens_hash: 200 + id,
                    mm_extra_info: None,
                }],
            },
        };
        let mut index = RadixIndex::new();
        let mut gate = RankGate::new();
        let mut out = [0; GATE_OUT_LEN];
        let e3 = envelope(&stored(3));
        assert_eq!(gate.apply(&mut index, &e3, &mut out), GATE_PASS);
        assert_eq!(out, [7, 3, 1, 0, 0, 0]);
        assert_eq!(index.size(), 0);
        gate.arm(7, 1, 3);
        assert_eq!(gate.apply(&mut index, &e3, &mut out), 0);
        assert_eq!(index.size(), 1);
        assert_eq!(gate.apply(&mut index, &e3, &mut out), GATE_PASS);
        assert_eq!(out, [7, 3, 1, 0, 1, 4]);
        assert_eq!(gate.take_seen(), vec![7]);
        assert_eq!(gate.take_seen(), Vec::<u64>::new());
        assert_eq!(gate.apply(&mut index, b"\x80", &mut out), GATE_OTHER);
        assert_eq!(gate.disarm(7, 1), Some(4));
        assert_eq!(gate.disarm(7, 1), None);
        gate.arm(7, 1, 4);
        gate.remove_worker(7);
        let e4 = envelope(&stored(4));
        assert_eq!(gate.apply(&mut index, &e4, &mut out), GATE_PASS);
    }
}
