//! Old against new, in one run: the reference model (tests/reference_index) and the shipped index on
//! the same Mooncake-like workload with shared block hashes (64 workers storing conversations that
//! share system prompts and earlier turns, each store continuing from the worker's cached prefix):
//! apply throughput while building a ~1 M-entry index, on a mixed stream with leaf-first evictions,
//! `find_matches` latency for 64-block prompts, and heap bytes per (worker, block) entry counted by
//! the allocator (with what `heap_bytes()` claims). Not a test of behaviour; run it by hand:
//!
//! cargo test --release -p dynamo-kv-core --test index_measure -- --ignored --nocapture

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use dynamo_kv_core::index::{Match, RadixIndex};
use dynamo_kv_core::wire::{EventData, RouterEvent, StoredBlock};

mod common;
mod reference_index;
use common::Rng;
use reference_index::RadixIndex as Reference;

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const WORKERS: u64 = 64;

struct Workload {
    docs: Vec<Vec<u64>>,
    build: Vec<RouterEvent>,
    mixed: Vec<RouterEvent>,
    queries: Vec<Vec<u64>>,
    build_blocks: u64,
    mixed_blocks: u64,
}

fn chain(tokens: &[u64]) -> Vec<u64> {
    let mut h = 0x5eed_u64;
    tokens
        .iter()
        .map(|&t| {
            h = (h ^ t).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29) ^ 0x1234;
            h
        })
        .collect()
}

fn workload() -> Workload {
    let mut r = Rng(2026);
    // 40 system prompts of 2-16 blocks; conversations of 4-64 blocks on one of them, and later turns
    // of a conversation extending it
    let prompts: Vec<Vec<u64>> = (0..40)
        .map(|_| (0..r.range(2, 16)).map(|_| r.next()).collect())
        .collect();
    let mut docs: Vec<Vec<u64>> = Vec::new();
    for _ in 0..6000 {
        let mut d = if !docs.is_empty() && r.chance(30) {
            docs[r.upto(docs.len())].clone()
        } else {
            prompts[r.upto(prompts.len())].clone()
        };
        for _ in 0..r.range(2, 40) {
            d.push(r.next());
        }
        d.truncate(160);
        docs.push(d);
    }
    let hashes: Vec<Vec<u64>> = docs.iter().map(|d| chain(d)).collect();
    // per worker: doc → how many leading blocks it holds
    let mut held: Vec<HashMap<usize, usize>> = vec![HashMap::new(); WORKERS as usize];
    let mut id = 0u64;
    let store = |r: &mut Rng, held: &mut Vec<HashMap<usize, usize>>, id: &mut u64| {
        let w = r.below(WORKERS);
        // popular docs more often
        let doc = (r.below(docs.len() as u64).min(r.below(docs.len() as u64))) as usize;
        let have = held[w as usize].get(&doc).copied().unwrap_or(0);
        let to = docs[doc].len();
        let from = if have >= to { 0 } else { have };
        held[w as usize].insert(doc, to);
        *id += 1;
        RouterEvent {
            worker_id: w,
            event_id: *id,
            dp_rank: 0,
            data: EventData::Stored {
                parent_hash: (from > 0).then(|| hashes[doc][from - 1]),
                blocks: (from..to)
                    .map(|i| StoredBlock {
                        block_hash: hashes[doc][i],
                        tokens_hash: docs[doc][i],
                        mm_extra_info: None,
                    })
                    .collect(),
            },
        }
    };
    let blocks = |e: &RouterEvent| match &e.data {
        EventData::Stored { blocks, .. } => blocks.len() as u64,
        EventData::Removed { block_hashes } => block_hashes.len() as u64,
        EventData::Cleared => 0,
    };
    let mut build = Vec::new();
    let mut build_blocks = 0;
    // about 1 M entries (re-stores of held prefixes do not add any)
    while build_blocks < 1_150_000 {
        let e = store(&mut r, &mut held, &mut id);
        build_blocks += blocks(&e);
        build.push(e);
    }
    let mut mixed = Vec::new();
    let mut mixed_blocks = 0;
    while mixed_blocks < 1_000_000 {
        let e = if r.chance(25) {
            // a leaf-first eviction of the tail of something the worker holds
            let w = r.below(WORKERS);
            let Some((&doc, &len)) = held[w as usize].iter().nth(r.upto(8)) else {
                continue;
            };
            let from = len.saturating_sub(r.range(1, 16) as usize);
            held[w as usize].insert(doc, from);
            id += 1;
            RouterEvent {
                worker_id: w,
                event_id: id,
                dp_rank: 0,
                data: EventData::Removed {
                    block_hashes: (from..len).rev().map(|i| hashes[doc][i]).collect(),
                },
            }
        } else {
            store(&mut r, &mut held, &mut id)
        };
        mixed_blocks += blocks(&e);
        mixed.push(e);
    }
    let queries = (0..20_000)
        .map(|_| {
            let d = &docs[r.below(docs.len() as u64).min(r.below(docs.len() as u64)) as usize];
            let mut q: Vec<u64> = d.iter().copied().take(64).collect();
            while q.len() < 64 {
                q.push(r.next());
            }
            q
        })
        .collect();
    Workload {
        docs,
        build,
        mixed,
        queries,
        build_blocks,
        mixed_blocks,
    }
}

/// What both indexes answer to.
trait Index {
    fn new() -> Self;
    fn apply(&mut self, e: &RouterEvent);
    fn find(&mut self, q: &[u64]) -> &[Match];
    fn size(&self) -> u64;
    fn heap_bytes(&self) -> usize;
}

impl Index for RadixIndex {
    fn new() -> Self {
        RadixIndex::new()
    }
    fn apply(&mut self, e: &RouterEvent) {
        self.apply_event(e);
    }
    fn find(&mut self, q: &[u64]) -> &[Match] {
        self.find_matches_ref(q, false)
    }
    fn size(&self) -> u64 {
        RadixIndex::size(self)
    }
    fn heap_bytes(&self) -> usize {
        RadixIndex::heap_bytes(self)
    }
}

impl Index for Reference {
    fn new() -> Self {
        Reference::new()
    }
    fn apply(&mut self, e: &RouterEvent) {
        self.apply_event(e);
    }
    fn find(&mut self, q: &[u64]) -> &[Match] {
        self.find_matches_ref(q, false)
    }
    fn size(&self) -> u64 {
        Reference::size(self)
    }
    fn heap_bytes(&self) -> usize {
        Reference::heap_bytes(self)
    }
}

struct Figures {
    build: f64,
    mixed: f64,
    p50: f64,
    p99: f64,
    entries: u64,
    bytes: f64,
    claimed: f64,
    scored: f64,
}

fn measure<I: Index>(w: &Workload) -> Figures {
    let before = LIVE.load(Ordering::Relaxed);
    let mut idx = I::new();
    let t = Instant::now();
    for e in &w.build {
        idx.apply(e);
    }
    let build = w.build_blocks as f64 / t.elapsed().as_secs_f64();
    let entries = idx.size();
    let bytes = (LIVE.load(Ordering::Relaxed) - before) as f64 / entries as f64;
    let claimed = idx.heap_bytes() as f64 / entries as f64;
    let mut lat = Vec::with_capacity(w.queries.len());
    let mut scored = 0usize;
    for q in &w.queries {
        let t = Instant::now();
        scored += idx.find(q).len();
        lat.push(t.elapsed().as_nanos() as f64);
    }
    lat.sort_by(f64::total_cmp);
    // the mixed stream on a fresh copy of the build
    let mut idx = I::new();
    for e in &w.build {
        idx.apply(e);
    }
    let t = Instant::now();
    for e in &w.mixed {
        idx.apply(e);
    }
    let mixed = w.mixed_blocks as f64 / t.elapsed().as_secs_f64();
    Figures {
        build,
        mixed,
        p50: lat[lat.len() / 2] / 1000.0,
        p99: lat[lat.len() * 99 / 100] / 1000.0,
        entries,
        bytes,
        claimed,
        scored: scored as f64 / w.queries.len() as f64,
    }
}

#[test]
#[ignore]
fn old_against_new() {
    let w = workload();
    println!(
        "workload: {} docs, build {} events / {} blocks, mixed {} events / {} blocks, {} queries of 64 blocks",
        w.docs.len(),
        w.build.len(),
        w.build_blocks,
        w.mixed.len(),
        w.mixed_blocks,
        w.queries.len()
    );
    for round in 0..3 {
        let old = measure::<Reference>(&w);
        let new = measure::<RadixIndex>(&w);
        for (name, f) in [("reference", &old), ("RadixIndex", &new)] {
            println!(
                "round {round} {name:>10}: build {:.2} M blocks/s, mixed {:.2} M blocks/s, find_matches p50 {:.3} µs p99 {:.3} µs ({:.1} scored), {} entries, {:.1} bytes/entry (heap_bytes says {:.1})",
                f.build / 1e6, f.mixed / 1e6, f.p50, f.p99, f.scored, f.entries, f.bytes, f.claimed
            );
        }
        println!(
            "round {round} new/old: build {:.2}x, mixed {:.2}x, p50 {:.2}x, bytes {:.2}x",
            new.build / old.build,
            new.mixed / old.mixed,
            new.p50 / old.p50,
            new.bytes / old.bytes
        );
    }
}
