//! The shared index (one writer, readers that never wait) against a single-threaded `RadixIndex`:
//! every answer a reader gets is the answer of a plain index after exactly the operations published
//! when it read, and no read sees part of an operation; plus publish and replay step by step, and
//! `find_matches_with` on `&self` against `find_matches`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use dynamo_kv_core::index::{ApplyOutcome, Match, MatchScratch, RadixIndex};
use dynamo_kv_core::index_shared::{PublishPolicy, SharedReader, SharedWriter};
use dynamo_kv_core::wire::{EventData, RouterEvent, StoredBlock};

mod common;
use common::Rng;

#[derive(Debug, Clone)]
enum Op {
    Event(RouterEvent),
    ClearRank(u64, u64, u32),
    RemoveWorker(u64),
    RemoveWorkerDpRank(u64, u32),
}

fn apply_plain(ix: &mut RadixIndex, op: &Op) -> ApplyOutcome {
    match op {
        Op::Event(ev) => ix.apply_event(ev),
        &Op::ClearRank(w, e, r) => ix.clear_rank(w, e, r),
        &Op::RemoveWorker(w) => {
            ix.remove_worker(w);
            ApplyOutcome::Applied
        }
        &Op::RemoveWorkerDpRank(w, r) => {
            ix.remove_worker_dp_rank(w, r);
            ApplyOutcome::Applied
        }
    }
}

fn apply_shared(wr: &mut SharedWriter, op: &Op) -> ApplyOutcome {
    match op {
        Op::Event(ev) => wr.apply_event(ev),
        &Op::ClearRank(w, e, r) => wr.clear_rank(w, e, r),
        &Op::RemoveWorker(w) => {
            wr.remove_worker(w);
            ApplyOutcome::Applied
        }
        &Op::RemoveWorkerDpRank(w, r) => {
            wr.remove_worker_dp_rank(w, r);
            ApplyOutcome::Applied
        }
    }
}

fn mix(h: u64, v: u64) -> u64 {
    let mut z = (h ^ v).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Documents (token paths sharing a few preambles) that workers store, extend and evict.
struct Docs {
    paths: Vec<Vec<u64>>,
}

impl Docs {
    fn new(r: &mut Rng, n: usize) -> Self {
        let paths = (0..n)
            .map(|d| {
                let pre = r.below(5);
                let pre_len = r.range(1, 4);
                let own = r.range(2, 12);
                (0..pre_len)
                    .map(|i| 1000 * (pre + 1) + i)
                    .chain((0..own).map(|i| 100_000 + 100 * d as u64 + i))
                    .collect()
            })
            .collect();
        Docs { paths }
    }

    /// The block hash of position `i` of doc `d` for an engine with hash seed `seed`.
    fn block(&self, d: usize, i: usize, seed: u64) -> u64 {
        self.paths[d][..=i].iter().fold(seed, |h, &t| mix(h, t))
    }
}

/// A seeded stream over `workers` worker ids of up to 3 dp ranks (more than 64 worker keys when
/// `workers` > 21): stores from the root and continuations, leaf-first and inner removes, clears of
/// a worker and of a rank, worker removals; some workers hash with their own seed.
fn stream(r: &mut Rng, docs: &Docs, workers: u64, n: usize) -> Vec<Op> {
    let seed = |w: u64| if w % 4 == 3 { w } else { 0 };
    (0..n as u64)
        .map(|id| {
            let w = r.below(workers);
            let rank = r.below(3) as u32;
            let d = r.upto(docs.paths.len());
            let len = docs.paths[d].len();
            let ev = |data| {
                Op::Event(RouterEvent {
                    worker_id: w,
                    event_id: id,
                    dp_rank: rank,
                    data,
                })
            };
            match r.below(100) {
                0..=59 => {
                    let start = if r.chance(70) { 0 } else { r.upto(len) };
                    let end = r.range(start as u64 + 1, len as u64) as usize;
                    ev(EventData::Stored {
                        parent_hash: (start > 0).then(|| docs.block(d, start - 1, seed(w))),
                        blocks: (start..end)
                            .map(|i| StoredBlock {
                                block_hash: docs.block(d, i, seed(w)),
                                tokens_hash: docs.paths[d][i],
                                mm_extra_info: None,
                            })
                            .collect(),
                    })
                }
                60..=84 => {
                    // a suffix (leaf-first eviction) or scattered blocks
                    let from = r.upto(len);
                    let hashes = if r.chance(60) {
                        (from..len)
                            .rev()
                            .map(|i| docs.block(d, i, seed(w)))
                            .collect()
                    } else {
                        (0..r.range(1, 3))
                            .map(|_| docs.block(d, r.upto(len), seed(w)))
                            .collect()
                    };
                    ev(EventData::Removed {
                        block_hashes: hashes,
                    })
                }
                85..=88 => ev(EventData::Cleared),
                89..=92 => Op::ClearRank(w, id, rank),
                93..=95 => Op::RemoveWorker(w),
                _ => Op::RemoveWorkerDpRank(w, rank),
            }
        })
        .collect()
}

fn queries(r: &mut Rng, docs: &Docs) -> Vec<Vec<u64>> {
    let mut qs: Vec<Vec<u64>> = docs.paths.clone();
    for _ in 0..docs.paths.len() {
        let d = r.upto(docs.paths.len());
        let cut = r.range(1, docs.paths[d].len() as u64) as usize;
        let mut q = docs.paths[d][..cut].to_vec();
        q.extend((0..r.below(4)).map(|_| 7_000_000 + r.below(3)));
        qs.push(q);
    }
    qs
}

/// A recorded read: the version it saw, the query, early exit, and the answer.
type Answer = (u64, usize, bool, Vec<Match>);

#[test]
fn every_read_equals_the_plain_index_after_the_published_operations() {
    for (seed, workers, policy) in [
        (
            1u64,
            6u64,
            PublishPolicy {
                max_ops: 5,
                max_delay: None,
            },
        ),
        // over 64 worker keys (the query's list path), publishing by count and by age
        (2, 30, PublishPolicy::default()),
        (
            3,
            12,
            PublishPolicy {
                max_ops: 1,
                max_delay: None,
            },
        ),
    ] {
        let mut r = Rng(seed);
        let docs = Docs::new(&mut r, 40);
        let ops = stream(&mut r, &docs, workers, 4000);
        let qs = Arc::new(queries(&mut r, &docs));
        let mut writer = SharedWriter::with_policy(policy);
        let done = Arc::new(AtomicBool::new(false));
        // the newest version any reader has seen: the writer waits on it now and then, so that the
        // readers see several versions however the threads are scheduled
        let newest_seen = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..3)
            .map(|k| {
                let mut reader = writer.reader();
                let (qs, done, newest_seen) = (qs.clone(), done.clone(), newest_seen.clone());
                std::thread::spawn(move || {
                    let mut rng = Rng(seed * 100 + k);
                    let mut seen: Vec<Answer> = Vec::new();
                    let mut scratch = MatchScratch::new();
                    let mut last = 0;
                    loop {
                        let finished = done.load(Ordering::Acquire);
                        let qi = rng.upto(qs.len());
                        let early = rng.chance(20);
                        let (version, got) = if k == 0 {
                            // through `read`, with a scratch of the caller
                            reader.read(|ix, v| {
                                (
                                    v,
                                    ix.find_matches_with(&qs[qi], early, &mut scratch).to_vec(),
                                )
                            })
                        } else {
                            let got = reader.find_matches(&qs[qi], early).to_vec();
                            (reader.version(), got)
                        };
                        assert!(version >= last, "a reader went back in time");
                        last = version;
                        newest_seen.fetch_max(version, Ordering::AcqRel);
                        // every answer up to a bound, then one in 16 (the check replays them all)
                        if seen.len() < 10_000 || finished || rng.chance(6) {
                            seen.push((version, qi, early, got));
                        }
                        if finished {
                            // one read after the end: the last publish
                            return seen;
                        }
                    }
                })
            })
            .collect();
        let mut rng = Rng(seed ^ 0xabc);
        let mut outcomes = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            outcomes.push(apply_shared(&mut writer, op));
            if rng.chance(3) {
                writer.publish();
            }
            if i % 500 == 499 {
                // a reader must see this version before the writer goes on
                writer.publish();
                let v = writer.published_version();
                while newest_seen.load(Ordering::Acquire) < v {
                    std::thread::yield_now();
                }
            }
        }
        writer.publish();
        assert_eq!(writer.published_version(), ops.len() as u64);
        done.store(true, Ordering::Release);
        let mut answers: Vec<Answer> = readers
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        answers.sort_by_key(|a| a.0);
        assert_eq!(answers.last().map(|a| a.0), Some(ops.len() as u64));
        let versions: std::collections::BTreeSet<u64> = answers.iter().map(|a| a.0).collect();
        assert!(
            versions.len() > 3,
            "seed {seed}: the readers saw only {} versions",
            versions.len()
        );

        // the same operations on a plain index, checked at each version a reader saw
        let mut plain = RadixIndex::new();
        let mut applied = 0usize;
        for (version, qi, early, got) in &answers {
            while applied < *version as usize {
                let want = apply_plain(&mut plain, &ops[applied]);
                assert_eq!(
                    outcomes[applied], want,
                    "seed {seed}: outcome of op {applied}"
                );
                applied += 1;
            }
            assert_eq!(
                got,
                &plain.find_matches(&qs[*qi], *early),
                "seed {seed}: query {qi} at version {version}"
            );
        }
        // and the writer's published copy is the plain index, event for event
        assert_eq!(writer.published().dump(None), plain.dump(None));
        assert_eq!(writer.published().counters(), plain.counters());
        assert_eq!(writer.published().size(), plain.size());
    }
}

/// A store of 8 blocks, then its removal, for one worker on two dp ranks, published in pairs: a
/// reader sees each rank at 0 or 8 blocks, both ranks alike, never part of a store or a removal,
/// nor a worker removed from one rank only.
#[test]
fn a_read_never_sees_part_of_an_operation() {
    let path: Vec<u64> = (1..=8).collect();
    let store = |rank: u32, id: u64| RouterEvent {
        worker_id: 7,
        event_id: id,
        dp_rank: rank,
        data: EventData::Stored {
            parent_hash: None,
            blocks: path
                .iter()
                .map(|&t| StoredBlock {
                    block_hash: t * 31,
                    tokens_hash: t,
                    mm_extra_info: None,
                })
                .collect(),
        },
    };
    let remove = |rank: u32, id: u64| RouterEvent {
        worker_id: 7,
        event_id: id,
        dp_rank: rank,
        data: EventData::Removed {
            block_hashes: path.iter().rev().map(|t| t * 31).collect(),
        },
    };
    let mut writer = SharedWriter::with_policy(PublishPolicy {
        max_ops: 0,
        max_delay: None,
    });
    let done = Arc::new(AtomicBool::new(false));
    // readers that have read once: the writer starts after both, so that neither can miss the run
    let reading = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let mut reader = writer.reader();
            let (done, path, reading) = (done.clone(), path.clone(), reading.clone());
            std::thread::spawn(move || {
                let mut states = [0u64; 2];
                while !done.load(Ordering::Acquire) {
                    if states[0] + states[1] == 1 {
                        reading.fetch_add(1, Ordering::Release);
                    }
                    let got = reader.find_matches(&path, false);
                    match got {
                        [] => states[0] += 1,
                        [a, b] => {
                            assert_eq!((a.worker_id, a.dp_rank, a.score), (7, 0, 8));
                            assert_eq!((b.worker_id, b.dp_rank, b.score), (7, 1, 8));
                            assert_eq!((a.tree_size, b.tree_size), (8, 8));
                            states[1] += 1;
                        }
                        other => panic!("a partial state: {other:?}"),
                    }
                }
                states
            })
        })
        .collect();
    while reading.load(Ordering::Acquire) < 2 {
        std::thread::yield_now();
    }
    for round in 0..3000u64 {
        let id = round * 4;
        writer.apply_event(&store(0, id));
        writer.apply_event(&store(1, id + 1));
        writer.publish();
        if round % 2 == 0 {
            writer.apply_event(&remove(0, id + 2));
            writer.apply_event(&remove(1, id + 3));
        } else {
            writer.remove_worker(7);
        }
        writer.publish();
    }
    done.store(true, Ordering::Release);
    for h in readers {
        let states = h.join().unwrap();
        assert!(states[0] + states[1] > 0);
    }
}

fn stored(worker_id: u64, dp_rank: u32, id: u64, parent: Option<u64>, blocks: &[u64]) -> Op {
    Op::Event(RouterEvent {
        worker_id,
        event_id: id,
        dp_rank,
        data: EventData::Stored {
            parent_hash: parent,
            blocks: blocks
                .iter()
                .map(|&t| StoredBlock {
                    block_hash: t + 500,
                    tokens_hash: t,
                    mm_extra_info: None,
                })
                .collect(),
        },
    })
}

#[test]
fn publish_replays_the_log_on_the_other_copy() {
    let mut writer = SharedWriter::with_policy(PublishPolicy {
        max_ops: 0,
        max_delay: None,
    });
    let mut reader = writer.reader();
    let mut plain = RadixIndex::new();
    let q = [1u64, 2, 3, 4, 5, 6];
    let steps: Vec<Vec<Op>> = vec![
        vec![stored(1, 0, 1, None, &[1, 2, 3])],
        vec![
            stored(2, 0, 1, None, &[1, 2]),
            stored(1, 0, 2, Some(503), &[4, 5]),
        ],
        vec![Op::Event(RouterEvent {
            worker_id: 1,
            event_id: 3,
            dp_rank: 0,
            data: EventData::Removed {
                block_hashes: vec![505, 999],
            },
        })],
        vec![stored(3, 1, 1, None, &[1, 2, 3, 4, 5, 6])],
        vec![stored(1, 1, 4, None, &[1])],
    ];
    let mut total = 0u64;
    for step in &steps {
        let before = plain.find_matches(&q, false);
        for op in step {
            let want = apply_plain(&mut plain, op);
            assert_eq!(apply_shared(&mut writer, op), want);
            total += 1;
        }
        // applied, not published: the readers still see the previous state
        assert_eq!(writer.version(), total);
        assert_eq!(writer.published_version(), total - step.len() as u64);
        assert_eq!(reader.find_matches(&q, false), &before[..]);
        assert_eq!(reader.version(), total - step.len() as u64);
        writer.publish();
        assert_eq!(writer.published_version(), total);
        assert_eq!(
            reader.find_matches(&q, false),
            &plain.find_matches(&q, false)[..]
        );
        assert_eq!(reader.version(), total);
        // after two publishes, each copy has been written and replayed
        reader.read(|ix, v| {
            assert_eq!(v, total);
            assert_eq!(ix.dump(None), plain.dump(None));
            assert_eq!(ix.counters(), plain.counters());
        });
    }
    // publishing with nothing new changes nothing
    writer.publish();
    assert_eq!(writer.published_version(), total);
    assert_eq!(
        reader.find_matches(&q, false),
        &[
            Match {
                worker_id: 1,
                dp_rank: 0,
                score: 4,
                tree_size: 4
            },
            Match {
                worker_id: 1,
                dp_rank: 1,
                score: 1,
                tree_size: 1
            },
            Match {
                worker_id: 2,
                dp_rank: 0,
                score: 2,
                tree_size: 2
            },
            Match {
                worker_id: 3,
                dp_rank: 1,
                score: 6,
                tree_size: 6
            },
        ]
    );
}

#[test]
fn remove_worker_and_clears_through_the_writer() {
    let mut writer = SharedWriter::with_policy(PublishPolicy {
        max_ops: 0,
        max_delay: None,
    });
    let mut reader = writer.reader();
    let q = [1u64, 2, 3];
    for (w, rank) in [(1, 0), (1, 1), (2, 0), (2, 1), (3, 0)] {
        apply_shared(&mut writer, &stored(w, rank, 1, None, &[1, 2, 3]));
    }
    writer.publish();
    let keys = |r: &mut SharedReader| -> Vec<(u64, u32)> {
        r.find_matches(&q, false)
            .iter()
            .map(|m| (m.worker_id, m.dp_rank))
            .collect()
    };
    assert_eq!(keys(&mut reader), [(1, 0), (1, 1), (2, 0), (2, 1), (3, 0)]);
    writer.remove_worker(1);
    writer.publish();
    assert_eq!(keys(&mut reader), [(2, 0), (2, 1), (3, 0)]);
    assert!(reader.read(|ix, _| !ix.knows(1, 0) && !ix.knows(1, 1)));
    writer.remove_worker_dp_rank(2, 1);
    writer.publish();
    assert_eq!(keys(&mut reader), [(2, 0), (3, 0)]);
    assert_eq!(writer.clear_rank(3, 9, 0), ApplyOutcome::Applied);
    writer.publish();
    assert_eq!(keys(&mut reader), [(2, 0)]);
    // a Dynamo 1.0 `cleared`: every rank of the worker id
    apply_shared(&mut writer, &stored(2, 1, 2, None, &[1]));
    apply_shared(
        &mut writer,
        &Op::Event(RouterEvent {
            worker_id: 2,
            event_id: 3,
            dp_rank: 1,
            data: EventData::Cleared,
        }),
    );
    writer.publish();
    assert_eq!(keys(&mut reader), []);
    // the worker keys are still known (cleared, not removed), on both copies
    writer.publish();
    apply_shared(&mut writer, &stored(4, 0, 1, None, &[9]));
    writer.publish();
    assert!(reader.read(|ix, _| ix.knows(2, 0) && ix.knows(2, 1) && ix.knows(3, 0)));
    assert_eq!(reader.read(|ix, _| ix.workers()), [2, 3, 4]);
}

#[test]
fn publishes_on_its_own_every_max_ops() {
    let mut writer = SharedWriter::with_policy(PublishPolicy {
        max_ops: 3,
        max_delay: None,
    });
    let reader = writer.reader();
    let mut reader2 = reader.clone();
    for i in 1..=7u64 {
        apply_shared(&mut writer, &stored(i, 0, 1, None, &[1]));
        assert_eq!(writer.published_version(), i / 3 * 3);
    }
    assert_eq!(reader2.find_matches(&[1], false).len(), 6);
    assert_eq!(reader2.version(), 6);
    writer.publish();
    assert_eq!(reader2.find_matches(&[1], false).len(), 7);
    // an age limit of zero: every operation is published as it is applied
    let mut writer = SharedWriter::with_policy(PublishPolicy {
        max_ops: 0,
        max_delay: Some(std::time::Duration::ZERO),
    });
    let mut reader = writer.reader();
    for i in 1..=3u64 {
        apply_shared(&mut writer, &stored(i, 0, 1, None, &[1]));
        assert_eq!(writer.published_version(), i);
        assert_eq!(reader.find_matches(&[1], false).len(), i as usize);
    }
}

/// A reader inside a read keeps its copy unchanged while the writer publishes and goes on: the
/// writer's next change waits for it, and the reader's next read sees the new state.
#[test]
fn the_writer_waits_for_a_reader_in_the_old_copy() {
    let mut writer = SharedWriter::with_policy(PublishPolicy {
        max_ops: 0,
        max_delay: None,
    });
    let q: Vec<u64> = (1..=40).collect();
    apply_shared(&mut writer, &stored(1, 0, 1, None, &q));
    writer.publish();
    // both copies up to date: the next change needs no wait
    writer.catch_up();
    let mut reader = writer.reader();
    let (to_writer, from_reader) = mpsc::channel();
    let (to_reader, from_writer) = mpsc::channel();
    let left = Arc::new(AtomicBool::new(false));
    let left2 = left.clone();
    let q2 = q.clone();
    let h = std::thread::spawn(move || {
        let mut scratch = MatchScratch::new();
        reader.read(|ix, v| {
            assert_eq!(v, 1);
            let first = ix.find_matches_with(&q2, false, &mut scratch).to_vec();
            assert_eq!(first.len(), 1);
            to_writer.send(()).unwrap();
            // the writer publishes a change and starts the next one meanwhile
            from_writer.recv().unwrap();
            for _ in 0..2000 {
                assert_eq!(ix.find_matches_with(&q2, false, &mut scratch), &first[..]);
                assert_eq!(ix.size(), 40);
            }
            left2.store(true, Ordering::Release);
        });
        // out of the read: the next one sees what the writer published
        let got = reader.find_matches(&q2, false).to_vec();
        (reader.version(), got)
    });
    from_reader.recv().unwrap();
    // the published copy is the one the reader is in: this change goes to the other one
    writer.remove_worker(1);
    writer.publish();
    to_reader.send(()).unwrap();
    // this one goes to the copy the reader is in: it waits until the reader is out
    apply_shared(&mut writer, &stored(2, 0, 1, None, &[1, 2]));
    assert!(
        left.load(Ordering::Acquire),
        "the writer changed a copy in use"
    );
    writer.publish();
    let (version, got) = h.join().unwrap();
    assert!(version >= 2);
    assert!(got.iter().all(|m| m.worker_id != 1));
}

/// A read that panics still ends: the writer is not left waiting for it.
#[test]
fn a_panicking_read_does_not_hold_the_writer() {
    let mut writer = SharedWriter::with_policy(PublishPolicy {
        max_ops: 1,
        max_delay: None,
    });
    let mut reader = writer.reader();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        reader.read(|_, _| panic!("a caller's bug"))
    }));
    assert!(r.is_err());
    for i in 0..4 {
        apply_shared(&mut writer, &stored(i, 0, 1, None, &[1]));
    }
    assert_eq!(reader.find_matches(&[1], false).len(), 4);
    drop(reader);
    apply_shared(&mut writer, &stored(9, 0, 1, None, &[1]));
    apply_shared(&mut writer, &stored(10, 0, 1, None, &[1]));
    assert_eq!(writer.published().size(), 6);
}

/// `find_matches_with` on `&self` answers as `find_matches`, also before the worker order was
/// brought up to date, and one scratch serves several indexes.
#[test]
fn find_matches_with_answers_as_find_matches() {
    let mut r = Rng(77);
    let docs = Docs::new(&mut r, 30);
    let ops = stream(&mut r, &docs, 30, 3000);
    let qs = queries(&mut r, &docs);
    let (mut a, mut b) = (RadixIndex::new(), RadixIndex::new());
    let mut scratch = MatchScratch::new();
    for (i, op) in ops.iter().enumerate() {
        apply_plain(&mut a, op);
        apply_plain(&mut b, op);
        if i % 7 != 0 {
            continue;
        }
        let qi = i % qs.len();
        let early = i % 3 == 0;
        // `a` answers through `&self` first (its order may be stale), then `b` the old way
        let got = a.find_matches_with(&qs[qi], early, &mut scratch).to_vec();
        assert_eq!(got, b.find_matches(&qs[qi], early), "op {i}");
        if i % 2 == 0 {
            a.prepare_reads();
            let again = a.find_matches_with(&qs[qi], early, &mut scratch).to_vec();
            assert_eq!(again, got);
        }
        assert_eq!(scratch.matches(), &got[..]);
    }
}
