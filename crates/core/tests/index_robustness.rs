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

fn one_block(
    worker_id: u64,
    parent_hash: Option<u64>,
    block_hash: u64,
    tokens_hash: u64,
) -> RouterEvent {
    RouterEvent {
        worker_id,
        event_id: block_hash,
        dp_rank: 0,
        data: EventData::Stored {
            parent_hash,
            blocks: vec![StoredBlock {
                block_hash,
                tokens_hash,
                mm_extra_info: None,
            }],
        },
    }
}

fn removed(worker_id: u64, block_hashes: Vec<u64>) -> RouterEvent {
    RouterEvent {
        worker_id,
        event_id: 0,
        dp_rank: 0,
        data: EventData::Removed { block_hashes },
    }
}

/// The dump's (parent, block hash, tokens hash) of one worker, in order.
fn dumped_blocks(idx: &RadixIndex, worker_id: u64) -> Vec<(Option<u64>, u64, u64)> {
    idx.dump(None)
        .into_iter()
        .filter(|e| e.worker_id == worker_id)
        .map(|e| match e.data {
            EventData::Stored {
                parent_hash,
                blocks,
            } => (parent_hash, blocks[0].block_hash, blocks[0].tokens_hash),
            _ => unreachable!(),
        })
        .collect()
}

#[test]
fn thousands_of_hashes_of_one_worker_on_one_node() {
    const N: u64 = 5000;
    let mut idx = RadixIndex::new();
    // worker 1 stores hashes 1..=N, all for tokens 7 from the root: one node; worker 2 joins it
    for h in 1..=N {
        assert_eq!(
            idx.apply_event(&one_block(1, None, h, 7)),
            ApplyOutcome::Applied
        );
        if h == 10 {
            assert_eq!(
                idx.apply_event(&one_block(2, None, 1 << 40, 7)),
                ApplyOutcome::Applied
            );
        }
    }
    // a child below worker 1's hash 5, and the same hash stored again at the same place (no change)
    assert_eq!(
        idx.apply_event(&one_block(1, Some(5), 1 << 41, 8)),
        ApplyOutcome::Applied
    );
    assert_eq!(
        idx.apply_event(&one_block(1, None, 4, 7)),
        ApplyOutcome::Applied
    );
    assert_eq!(idx.size(), N + 2);
    let scores = |idx: &mut RadixIndex, q: &[u64]| {
        idx.find_matches(q, false)
            .iter()
            .map(|m| (m.worker_id, m.score, m.tree_size))
            .collect::<Vec<_>>()
    };
    assert_eq!(scores(&mut idx, &[7, 8]), vec![(1, 2, N + 1), (2, 1, 1)]);
    // the odd hashes go, last first (tombs, then compactions of the node's holders)
    let odd: Vec<u64> = (1..=N).rev().filter(|h| h % 2 == 1).collect();
    assert_eq!(idx.apply_event(&removed(1, odd)), ApplyOutcome::Applied);
    // hash 6 moves to another node (tokens 9 from the root)
    assert_eq!(
        idx.apply_event(&one_block(1, None, 6, 9)),
        ApplyOutcome::Applied
    );
    let left: Vec<u64> = (2..=N).filter(|h| h % 2 == 0 && *h != 6).collect();
    let mut want: Vec<(Option<u64>, u64, u64)> = left.iter().map(|&h| (None, h, 7)).collect();
    // children in ascending tokens hash: 8 (below the node of tokens 7, parent = its first hash), 9
    want.push((Some(2), 1 << 41, 8));
    want.push((None, 6, 9));
    assert_eq!(
        dumped_blocks(&idx, 1),
        want,
        "insertion order kept through removals and a move"
    );
    assert_eq!(dumped_blocks(&idx, 2), vec![(None, 1 << 40, 7)]);
    assert_eq!(
        scores(&mut idx, &[7, 8]),
        vec![(1, 2, left.len() as u64 + 2), (2, 1, 1)]
    );
    assert_eq!(scores(&mut idx, &[9]), vec![(1, 1, left.len() as u64 + 2)]);
    // worker 1 leaves the node: worker 2 keeps it, worker 1's child below it is still reachable
    assert_eq!(
        idx.apply_event(&removed(1, left.clone())),
        ApplyOutcome::Applied
    );
    assert_eq!(scores(&mut idx, &[7, 8]), vec![(2, 1, 1)]);
    assert_eq!(
        dumped_blocks(&idx, 1),
        vec![(None, 6, 9)],
        "the child's parent is no longer held"
    );
    // the node's last holder goes: it is dropped and the child detached (stale, still held)
    assert_eq!(
        idx.apply_event(&removed(2, vec![1 << 40])),
        ApplyOutcome::Applied
    );
    assert!(scores(&mut idx, &[7, 8]).is_empty());
    assert_eq!(idx.size(), 2);
    assert_eq!(
        idx.apply_event(&removed(1, vec![6, 1 << 41, 3])),
        ApplyOutcome::BlockNotFound
    );
    assert_eq!(idx.size(), 0);
    assert!(idx.dump(None).is_empty());
}

#[test]
fn many_worker_keys_with_many_hashes_on_one_node() {
    // 80 worker ids (slots past the 64-slot mask), 40 hashes each on the node of tokens 3, and one
    // worker in 4 also on its child of tokens 4
    let mut idx = RadixIndex::new();
    for round in 0..40u64 {
        for w in 0..80u64 {
            let h = w << 32 | round;
            idx.apply_event(&one_block(w, None, h, 3));
            if round == 39 && w % 4 == 0 {
                idx.apply_event(&one_block(w, Some(h), h | 1 << 31, 4));
            }
        }
    }
    let m = idx.find_matches(&[3, 4], false);
    assert_eq!(m.len(), 80);
    for x in &m {
        let below = x.worker_id % 4 == 0;
        assert_eq!(x.score, if below { 2 } else { 1 }, "worker {}", x.worker_id);
        assert_eq!(x.tree_size, if below { 41 } else { 40 });
    }
    // every worker drops its hashes but the last: the answers stay, and each dump lists one hash there
    for w in 0..80u64 {
        let ev = removed(w, (0..39).map(|r| w << 32 | r).collect());
        assert_eq!(idx.apply_event(&ev), ApplyOutcome::Applied);
    }
    let m2 = idx.find_matches(&[3, 4], false);
    assert_eq!(
        m2.iter()
            .map(|x| (x.worker_id, x.score))
            .collect::<Vec<_>>(),
        m.iter().map(|x| (x.worker_id, x.score)).collect::<Vec<_>>()
    );
    for w in [0u64, 1, 79] {
        assert_eq!(dumped_blocks(&idx, w)[0], (None, w << 32 | 39, 3));
    }
    for w in 0..80u64 {
        idx.remove_worker(w);
    }
    assert_eq!(idx.size(), 0);
    assert!(idx.find_matches(&[3], false).is_empty());
}

#[test]
fn random_streams_on_crowded_nodes_keep_the_invariants() {
    // few tokens hashes and many block hashes per worker: nodes with dozens to hundreds of holders,
    // removed and moved at random (big holder sets, their tombs and compactions)
    let mut r = Rng(7);
    for _ in 0..20 {
        let mut idx = RadixIndex::new();
        for id in 0..3000 {
            let ids = if r.below(4) == 0 { 90 } else { 3 };
            let worker_id = r.below(ids);
            let data = match r.below(10) {
                0..=3 => EventData::Removed {
                    block_hashes: (0..1 + r.below(40)).map(|_| r.below(400)).collect(),
                },
                4 if r.below(20) == 0 => EventData::Cleared,
                _ => EventData::Stored {
                    parent_hash: (r.below(3) == 0).then(|| r.below(400)),
                    blocks: (0..1 + r.below(6))
                        .map(|_| StoredBlock {
                            block_hash: r.below(400),
                            tokens_hash: r.below(2),
                            mm_extra_info: None,
                        })
                        .collect(),
                },
            };
            idx.apply_event(&RouterEvent {
                worker_id,
                event_id: id,
                dp_rank: 0,
                data,
            });
            if id % 100 == 0 {
                let mut q = Rng(id);
                check_invariants(&mut idx, &mut q);
            }
        }
        for w in idx.workers() {
            idx.remove_worker(w);
        }
        assert_eq!(idx.size(), 0);
        assert!(idx.find_matches(&[0, 1, 0], false).is_empty());
    }
}
