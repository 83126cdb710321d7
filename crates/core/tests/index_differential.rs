//! The radix index against the reference model (tests/reference_index: the one-node-per-block
//! index it replaced, kept verbatim): random event streams applied to both must give the same
//! outcome for every event and afterwards the same answers to everything the public API can ask
//! (find_matches with and without early exit, size, workers, counters, dump per rank and its
//! cursor). Streams cover shared block hashes, per-worker hashes for the same tokens, several
//! hashes of one worker for the same tokens, inner removes, moves, clears, worker removals, and
//! nodes with more than 128 holders.

use dynamo_kv_core::index::{ApplyOutcome, RadixIndex};
use dynamo_kv_core::wire::{EventData, RouterEvent, StoredBlock};

mod common;
mod reference_index;
use common::Rng;
use reference_index::RadixIndex as Reference;

/// How the engines of a stream hash blocks.
#[derive(Clone, Copy, Debug)]
enum Hashing {
    /// The same tokens path hashes alike on every worker.
    Shared,
    /// Each worker key has its own seed.
    PerWorker,
    /// Per worker, and often a second hash (a cache salt) for the same path.
    Salted,
    /// Hashes from a tiny space: collisions, moves, repeats and unknown parents everywhere.
    Tiny,
}

struct Stream {
    r: Rng,
    hashing: Hashing,
    /// token paths that stores walk along (shared prefixes)
    docs: Vec<Vec<u64>>,
    workers: u64,
    ranks: u64,
    /// per (worker, rank, doc): the longest stored prefix, to continue from it
    stored: std::collections::HashMap<(u64, u32, usize), usize>,
    id: u64,
    /// percent of events that store on the crowded node
    crowd: u64,
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Stream {
    fn new(seed: u64, hashing: Hashing) -> Self {
        let mut r = Rng(seed);
        let alphabet = 1 + r.below(4);
        let mut docs: Vec<Vec<u64>> = Vec::new();
        for _ in 0..(2 + r.below(12)) {
            let cap = if r.chance(10) { 200 } else { 40 };
            let len = 1 + r.upto(cap);
            // start from another doc's prefix half the time
            let mut d: Vec<u64> = match docs.len() {
                0 => Vec::new(),
                n if r.chance(50) => {
                    let o = &docs[r.upto(n)];
                    o[..r.upto(o.len() + 1)].to_vec()
                }
                _ => Vec::new(),
            };
            while d.len() < len {
                d.push(r.below(alphabet));
            }
            docs.push(d);
        }
        let wcap = if r.chance(20) { 80 } else { 6 };
        let workers = 1 + r.below(wcap);
        let ranks = 1 + r.below(3);
        Stream {
            r,
            hashing,
            docs,
            workers,
            ranks,
            stored: Default::default(),
            id: 0,
            crowd: 5,
        }
    }

    fn worker_key(&mut self) -> (u64, u32) {
        let w = self.r.below(self.workers);
        let w = if w % 7 == 3 { u64::MAX - w } else { w };
        (w, self.r.below(self.ranks) as u32)
    }

    /// The block hash of `doc[..=i]` for a worker key.
    fn hash(&mut self, key: (u64, u32), doc: usize, i: usize) -> u64 {
        if let Hashing::Tiny = self.hashing {
            return self.r.below(24);
        }
        let mut h = 0x1234_5678u64;
        for &t in &self.docs[doc][..=i] {
            h = mix(h ^ t.wrapping_add(0x9e37_79b9_7f4a_7c15));
        }
        match self.hashing {
            Hashing::Shared => h,
            Hashing::PerWorker => mix(h ^ key.0.rotate_left(17) ^ key.1 as u64),
            _ => {
                let salt = if self.r.chance(25) { 1 } else { 0 };
                mix(h ^ key.0.rotate_left(17) ^ key.1 as u64 ^ salt << 50)
            }
        }
    }

    fn event(&mut self) -> RouterEvent {
        let key = self.worker_key();
        self.id += 1;
        let data = match self.r.below(100) {
            0..=2 if self.crowd < 50 => EventData::Cleared,
            3..=24 => {
                let doc = self.r.upto(self.docs.len());
                let len = self.docs[doc].len();
                let mut hashes = Vec::new();
                if self.r.chance(60) {
                    // a suffix (leaf first), sometimes one inner block
                    let to = self
                        .stored
                        .get(&(key.0, key.1, doc))
                        .copied()
                        .unwrap_or(len);
                    let from = to.saturating_sub(1 + self.r.upto(6));
                    for i in (from..to).rev() {
                        hashes.push(self.hash(key, doc, i));
                    }
                    self.stored.insert((key.0, key.1, doc), from);
                } else {
                    for _ in 0..1 + self.r.below(3) {
                        let i = self.r.upto(len);
                        hashes.push(self.hash(key, doc, i));
                    }
                }
                if self.r.chance(10) {
                    hashes.push(self.r.next());
                }
                if self.r.chance(self.crowd) {
                    let most = if self.r.chance(30) { 20 } else { 3 };
                    for _ in 0..self.r.range(1, most) {
                        hashes.push(0xC0 + self.r.below(400));
                    }
                }
                EventData::Removed {
                    block_hashes: hashes,
                }
            }
            n if n >= 25 && n < 25 + self.crowd && !matches!(self.hashing, Hashing::Tiny) => {
                // the crowded node: one tokens hash from the root (or below it) under many hashes
                let parent = if self.r.chance(30) {
                    Some(0xC0 + self.r.below(40))
                } else {
                    None
                };
                EventData::Stored {
                    parent_hash: parent,
                    blocks: vec![StoredBlock {
                        block_hash: 0xC0 + self.r.below(400),
                        tokens_hash: 999 + parent.map_or(0, |_| 1),
                        mm_extra_info: None,
                    }],
                }
            }
            _ => {
                let doc = self.r.upto(self.docs.len());
                let len = self.docs[doc].len();
                let have = self.stored.get(&(key.0, key.1, doc)).copied().unwrap_or(0);
                let from = match self.r.below(10) {
                    0..=3 => 0,
                    4..=7 => have.min(len - 1),
                    _ => self.r.upto(len),
                };
                let ncap = if self.r.chance(20) { 64 } else { 12 };
                let n = 1 + self.r.upto(ncap);
                let to = (from + n).min(len);
                let parent_hash = (from > 0).then(|| self.hash(key, doc, from - 1));
                let blocks: Vec<StoredBlock> = (from..to)
                    .map(|i| StoredBlock {
                        block_hash: self.hash(key, doc, i),
                        tokens_hash: self.docs[doc][i],
                        mm_extra_info: None,
                    })
                    .collect();
                if to > have && from <= have {
                    self.stored.insert((key.0, key.1, doc), to);
                }
                EventData::Stored {
                    parent_hash,
                    blocks,
                }
            }
        };
        RouterEvent {
            worker_id: key.0,
            event_id: self.id,
            dp_rank: key.1,
            data,
        }
    }

    fn query(&mut self) -> Vec<u64> {
        let doc = self.r.upto(self.docs.len());
        let d = &self.docs[doc];
        let mut q = d[..self.r.upto(d.len() + 1)].to_vec();
        for _ in 0..self.r.below(4) {
            q.push(if self.r.chance(50) {
                999
            } else {
                self.r.below(5)
            });
        }
        if self.r.chance(10) {
            q.insert(0, 999);
        }
        q
    }
}

fn compare(new: &mut RadixIndex, old: &mut Reference, s: &mut Stream, ctx: &str) {
    for _ in 0..4 {
        let q = s.query();
        for early in [false, true] {
            assert_eq!(
                new.find_matches(&q, early),
                old.find_matches(&q, early),
                "{ctx}: find_matches({q:?}, {early})"
            );
        }
    }
    assert_eq!(new.size(), old.size(), "{ctx}: size");
    assert_eq!(new.workers(), old.workers(), "{ctx}: workers");
    assert_eq!(new.counters(), old.counters(), "{ctx}: counters");
    assert_eq!(new.dump(None), old.dump(None), "{ctx}: dump");
    let rank = s.r.below(3) as u32;
    let want = old.dump(Some(rank));
    assert_eq!(new.dump(Some(rank)), want, "{ctx}: dump of rank {rank}");
    let mut c = new.dump_cursor(Some(rank));
    let mut got = Vec::new();
    while let Some(e) = new.dump_next(&mut c).expect("unchanged index") {
        got.push(e);
    }
    assert_eq!(got, want, "{ctx}: dump cursor of rank {rank}");
}

fn run(seed: u64, hashing: Hashing, events: usize) -> [u64; 5] {
    run_with(Stream::new(seed, hashing), seed, hashing, events)
}

fn run_with(mut s: Stream, seed: u64, hashing: Hashing, events: usize) -> [u64; 5] {
    let mut new = RadixIndex::new();
    let mut old = Reference::new();
    let mut outcomes = [0u64; 5];
    for i in 0..events {
        let ev = s.event();
        let ctx = format!("{hashing:?} seed {seed} event {i}");
        let want = old.apply_event(&ev);
        outcomes[want as usize] += 1;
        assert_eq!(new.apply_event(&ev), want, "{ctx}: outcome of {ev:?}");
        // (the crowded streams grow large nodes: no worker removals there)
        let pick = if s.crowd > 50 { 199 } else { s.r.below(200) };
        match pick {
            0 => {
                let (w, _) = s.worker_key();
                new.remove_worker(w);
                old.remove_worker(w);
            }
            1 => {
                let (w, rank) = s.worker_key();
                new.remove_worker_dp_rank(w, rank);
                old.remove_worker_dp_rank(w, rank);
            }
            2 => {
                let (w, rank) = s.worker_key();
                assert_eq!(new.clear_rank(w, 5, rank), old.clear_rank(w, 5, rank));
            }
            _ => {}
        }
        let (w, rank) = s.worker_key();
        assert_eq!(new.knows(w, rank), old.knows(w, rank), "{ctx}: knows");
        if i % 25 == 24 {
            compare(&mut new, &mut old, &mut s, &ctx);
        }
    }
    compare(
        &mut new,
        &mut old,
        &mut s,
        &format!("{hashing:?} seed {seed} end"),
    );
    for w in new.workers() {
        new.remove_worker(w);
        old.remove_worker(w);
    }
    assert_eq!(new.size(), 0);
    assert!(new.dump(None).is_empty());
    outcomes
}

fn many(hashing: Hashing, rounds: u64, events: usize) {
    let mut total = [0u64; 5];
    for seed in 0..rounds {
        let o = run(seed * 7919 + 1, hashing, events);
        for (t, x) in total.iter_mut().zip(o) {
            *t += x;
        }
    }
    println!("{hashing:?}: outcomes {total:?}");
    // the streams reach every event-level outcome
    assert!(total[ApplyOutcome::Applied as usize] > 0);
    assert!(total[ApplyOutcome::ParentNotFound as usize] > 0);
    assert!(total[ApplyOutcome::BlockNotFound as usize] > 0);
}

#[test]
fn shared_hashes_agree_with_the_reference() {
    many(Hashing::Shared, 60, 600);
}

#[test]
fn per_worker_hashes_agree_with_the_reference() {
    many(Hashing::PerWorker, 60, 600);
}

#[test]
fn salted_hashes_agree_with_the_reference() {
    many(Hashing::Salted, 60, 600);
}

#[test]
fn tiny_hash_spaces_agree_with_the_reference() {
    many(Hashing::Tiny, 100, 400);
    let mut s = Stream::new(3, Hashing::Tiny);
    // invalid sequences happen there too
    let mut invalid = 0;
    let mut idx = RadixIndex::new();
    for _ in 0..2000 {
        if idx.apply_event(&s.event()) == ApplyOutcome::InvalidBlockSequence {
            invalid += 1;
        }
    }
    assert!(invalid > 0);
}

#[test]
fn crowded_nodes_agree_with_the_reference() {
    // one or two worker keys putting hundreds of hashes on one node (indexed entries, tombs,
    // compaction), with chains below some of them
    for seed in 0..12 {
        let hashing = [Hashing::Shared, Hashing::Salted][seed as usize % 2];
        let mut s = Stream::new(seed * 31 + 5, hashing);
        (s.workers, s.ranks, s.crowd) = (1 + seed % 2, 1, 60);
        run_with(s, seed, hashing, 1500);
    }
}
