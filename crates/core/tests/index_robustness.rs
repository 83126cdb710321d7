//! The radix index and local indexer under random and hostile event streams: no panic, and the
//! invariants that hold whatever the input (sizes add up, answers are ordered and bounded, a dump
//! re-applied answers queries the same, memory returns when everything is removed), plus envelope
//! decoding of mutated envelopes.

use dynamo_kv_core::index::{ApplyOutcome, RadixIndex};
use dynamo_kv_core::local::{LocalIndexer, RangeResult};
use dynamo_kv_core::wire::{
    decode_router_event_envelope, write_envelope, write_router_event_msgpack, EventData,
    RouterEvent, StoredBlock,
};

mod common;
use common::Rng;

/// Hashes from a small space so that collisions, moves, repeats and unknown parents are common.
fn small(r: &mut Rng) -> u64 {
    r.below(64)
}

fn random_event(r: &mut Rng, id: u64) -> RouterEvent {
    let worker_id = r.below(6) | if r.below(10) == 0 { u64::MAX - 3 } else { 0 };
    let dp_rank = r.below(3) as u32;
    let data = match r.below(10) {
        0 => EventData::Cleared,
        1..=3 => EventData::Removed {
            block_hashes: (0..r.below(6)).map(|_| small(r)).collect(),
        },
        _ => EventData::Stored {
            parent_hash: if r.below(2) == 0 {
                None
            } else {
                Some(small(r))
            },
            blocks: (0..r.below(9))
                .map(|_| StoredBlock {
                    block_hash: small(r),
                    tokens_hash: r.below(8),
                    mm_extra_info: None,
                })
                .collect(),
        },
    };
    RouterEvent {
        worker_id,
        event_id: id,
        dp_rank,
        data,
    }
}

fn check_invariants(idx: &mut RadixIndex, r: &mut Rng) {
    let q: Vec<u64> = (0..r.below(12)).map(|_| r.below(8)).collect();
    for early in [false, true] {
        let m = idx.find_matches(&q, early);
        assert!(
            m.windows(2)
                .all(|w| (w[0].worker_id, w[0].dp_rank) < (w[1].worker_id, w[1].dp_rank)),
            "ordered"
        );
        assert!(
            m.iter()
                .all(|x| x.score >= 1 && x.score as usize <= q.len() && x.tree_size >= 1),
            "bounded"
        );
    }
    let dumped = idx.dump(None);
    assert!(
        dumped.len() as u64 <= idx.size(),
        "a dump lists at most the held entries"
    );
    let mut copy = RadixIndex::new();
    for e in &dumped {
        assert_eq!(
            copy.apply_event(e),
            ApplyOutcome::Applied,
            "a dump applies cleanly"
        );
    }
    assert_eq!(copy.dump(None), dumped, "a dump is a fixed point");
    assert_eq!(
        copy.find_matches(&q, false)
            .iter()
            .map(|m| (m.worker_id, m.dp_rank, m.score))
            .collect::<Vec<_>>(),
        idx.find_matches(&q, false)
            .iter()
            .map(|m| (m.worker_id, m.dp_rank, m.score))
            .collect::<Vec<_>>()
    );
}

#[test]
fn random_streams_keep_the_invariants() {
    let mut r = Rng(42);
    let mut steps = 0;
    for round in 0..200 {
        let mut idx = RadixIndex::new();
        let mut local = LocalIndexer::new(1 + r.below(16) as usize);
        for id in 0..400 {
            let ev = random_event(&mut r, id);
            let a = idx.apply_event(&ev);
            assert_eq!(
                local.apply_event(&ev),
                a,
                "a local indexer applies like an index"
            );
            match r.below(50) {
                0 => {
                    let w = r.below(6);
                    idx.remove_worker(w);
                    local.index.remove_worker(w);
                }
                1 => {
                    let (w, rank) = (r.below(6), r.below(3) as u32);
                    idx.remove_worker_dp_rank(w, rank);
                    local.index.remove_worker_dp_rank(w, rank);
                }
                _ => {}
            }
            if id % 50 == 0 {
                check_invariants(&mut idx, &mut r);
                let (s, e) = (r.below(500), r.below(500));
                match local.events_in_range(
                    r.below(4) as u32,
                    (r.below(4) != 0).then_some(s),
                    (r.below(2) == 0).then_some(e),
                ) {
                    RangeResult::Events(evs) => {
                        assert!(evs.iter().all(|x| x.event_id >= s), "events from start")
                    }
                    RangeResult::InvalidRange { start_id, end_id } => assert!(end_id < start_id),
                    _ => {}
                }
            }
            steps += 1;
        }
        // everything removed: no entry and no node left behind
        for w in idx.workers() {
            idx.remove_worker(w);
        }
        assert_eq!(idx.size(), 0, "round {round}");
        assert!(idx.dump(None).is_empty());
        assert!(idx.find_matches(&[0, 1, 2], false).is_empty());
    }
    println!("{steps} events applied");
}

#[test]
fn long_chains_and_wide_nodes_do_not_recurse_or_blow_up() {
    let mut idx = RadixIndex::new();
    // one 100,000-block chain: dropping its root detaches the rest without recursion
    let blocks: Vec<StoredBlock> = (0..100_000u64)
        .map(|i| StoredBlock {
            block_hash: i + 1,
            tokens_hash: i,
            mm_extra_info: None,
        })
        .collect();
    let ev = |data| RouterEvent {
        worker_id: 1,
        event_id: 0,
        dp_rank: 0,
        data,
    };
    assert_eq!(
        idx.apply_event(&ev(EventData::Stored {
            parent_hash: None,
            blocks
        })),
        ApplyOutcome::Applied
    );
    assert_eq!(
        idx.find_matches(&(0..100_000u64).collect::<Vec<_>>(), false)[0].score,
        100_000
    );
    assert_eq!(
        idx.apply_event(&ev(EventData::Removed {
            block_hashes: vec![1]
        })),
        ApplyOutcome::Applied
    );
    assert!(
        idx.find_matches(&[0, 1], false).is_empty(),
        "the chain is unreachable"
    );
    assert_eq!(idx.size(), 99_999, "its blocks are still held (stale)");
    assert_eq!(
        idx.apply_event(&ev(EventData::Cleared)),
        ApplyOutcome::Applied
    );
    assert_eq!(idx.size(), 0);
    // 10,000 children under the root, then all removed
    let wide: Vec<RouterEvent> = (0..10_000u64)
        .map(|i| RouterEvent {
            worker_id: 2,
            event_id: i,
            dp_rank: 0,
            data: EventData::Stored {
                parent_hash: None,
                blocks: vec![StoredBlock {
                    block_hash: i,
                    tokens_hash: i,
                    mm_extra_info: None,
                }],
            },
        })
        .collect();
    for e in &wide {
        idx.apply_event(e);
    }
    assert_eq!(idx.size(), 10_000);
    idx.remove_worker(2);
    assert_eq!(idx.size(), 0);
    assert_eq!(
        idx.workers(),
        vec![1],
        "a cleared worker stays known; a removed one does not"
    );
}

#[test]
fn mutated_envelopes_decode_or_fail_cleanly() {
    let mut r = Rng(7);
    let mut decoded = 0;
    for i in 0..200_000u64 {
        let ev = random_event(&mut r, i);
        let mut payload = Vec::new();
        write_router_event_msgpack(&mut payload, &ev);
        let mut env = Vec::new();
        write_envelope(
            &mut env,
            ev.worker_id,
            i,
            1_700_000_000_000,
            "kv-events",
            &payload,
        );
        assert_eq!(
            decode_router_event_envelope(&env).as_ref(),
            Ok(&ev),
            "a clean envelope round-trips"
        );
        for _ in 0..1 + r.below(3) {
            match r.below(3) {
                0 if !env.is_empty() => {
                    let at = r.below(env.len() as u64) as usize;
                    env[at] ^= 1 << r.below(8);
                }
                1 => env.truncate(r.below(env.len() as u64 + 1) as usize),
                _ => env.insert(r.below(env.len() as u64 + 1) as usize, r.next() as u8),
            }
        }
        if decode_router_event_envelope(&env).is_ok() {
            decoded += 1;
        }
    }
    println!("{decoded} of 200000 mutated envelopes still decoded");
}

/// find_matches against an oracle read from the dump (per worker key, the token paths it holds from
/// the root, which is what a query credits), with up to 150 worker keys so that slots beyond the
/// 64-bit masks are exercised, and slots freed by removeWorker reused.
#[test]
fn matches_agree_with_the_dump_beyond_64_worker_keys() {
    use std::collections::{HashMap, HashSet};
    let mut r = Rng(2026);
    for round in 0..12 {
        let mut idx = RadixIndex::new();
        let n_ids = 20 + r.below(55);
        let mut held: HashMap<(u64, u32), Vec<u64>> = HashMap::new();
        for id in 0..4000u64 {
            let key = (r.below(n_ids), r.below(2) as u32);
            let mine = held.entry(key).or_default();
            let data = match r.below(20) {
                0 => {
                    idx.remove_worker(key.0);
                    held.retain(|k, _| k.0 != key.0);
                    continue;
                }
                1..=4 if !mine.is_empty() => {
                    let h = mine.swap_remove(r.below(mine.len() as u64) as usize);
                    EventData::Removed {
                        block_hashes: vec![h],
                    }
                }
                _ => {
                    let parent = (!mine.is_empty() && r.below(2) == 0)
                        .then(|| mine[r.below(mine.len() as u64) as usize]);
                    let blocks: Vec<StoredBlock> = (0..1 + r.below(5))
                        .map(|_| StoredBlock {
                            block_hash: r.next(),
                            tokens_hash: r.below(3),
                            mm_extra_info: None,
                        })
                        .collect();
                    mine.extend(blocks.iter().map(|b| b.block_hash));
                    EventData::Stored {
                        parent_hash: parent,
                        blocks,
                    }
                }
            };
            idx.apply_event(&RouterEvent {
                worker_id: key.0,
                event_id: id,
                dp_rank: key.1,
                data,
            });
            if id % 200 != 199 {
                continue;
            }
            // the oracle: token paths per worker key, from the dump (parents come first)
            let mut paths: HashMap<(u64, u32), HashSet<Vec<u64>>> = HashMap::new();
            let mut path_of: HashMap<(u64, u32, u64), Vec<u64>> = HashMap::new();
            for ev in idx.dump(None) {
                let EventData::Stored {
                    parent_hash,
                    blocks,
                } = &ev.data
                else {
                    unreachable!()
                };
                let mut p = parent_hash
                    .map(|h| path_of[&(ev.worker_id, ev.dp_rank, h)].clone())
                    .unwrap_or_default();
                p.push(blocks[0].tokens_hash);
                path_of.insert((ev.worker_id, ev.dp_rank, blocks[0].block_hash), p.clone());
                paths
                    .entry((ev.worker_id, ev.dp_rank))
                    .or_default()
                    .insert(p);
            }
            for _ in 0..20 {
                let q: Vec<u64> = (0..1 + r.below(7)).map(|_| r.below(3)).collect();
                let mut want: Vec<(u64, u32, u32)> = paths
                    .iter()
                    .map(|(k, ps)| {
                        (
                            k.0,
                            k.1,
                            (1..=q.len()).take_while(|&n| ps.contains(&q[..n])).count() as u32,
                        )
                    })
                    .filter(|m| m.2 > 0)
                    .collect();
                want.sort_unstable();
                let got: Vec<(u64, u32, u32)> = idx
                    .find_matches(&q, false)
                    .iter()
                    .map(|m| (m.worker_id, m.dp_rank, m.score))
                    .collect();
                assert_eq!(got, want, "round {round}, event {id}, query {q:?}");
            }
        }
    }
}
