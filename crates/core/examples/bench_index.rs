//! Pure-Rust radix index figures for `npm run bench`: apply throughput and find_matches latency on
//! a synthetic index (64 workers sharing prefixes), to separate the core's cost from the boundary's.
//!
//! cargo run --release --example bench_index -- [events] [queries]

use std::time::Instant;

use dynamo_kv_core::index::RadixIndex;
use dynamo_kv_core::wire::{EventData, RouterEvent, StoredBlock};

// the tests' seeded generator
#[path = "../tests/common/mod.rs"]
mod common;
use common::Rng;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n_events: usize = args.get(1).map_or(200_000, |s| s.parse().unwrap());
    let n_queries: usize = args.get(2).map_or(20_000, |s| s.parse().unwrap());
    let mut rng = Rng(7);
    let prefixes: Vec<Vec<u64>> = (0..50)
        .map(|_| (0..8).map(|_| rng.next()).collect())
        .collect();
    let mut events = Vec::with_capacity(n_events);
    let mut blocks_total = 0u64;
    for i in 0..n_events {
        let w = rng.below(64);
        let p = &prefixes[rng.below(50) as usize];
        let n = 1 + rng.below(32) as usize;
        let mut acc = 0u64;
        let blocks: Vec<StoredBlock> = (0..n)
            .map(|k| {
                let t = if k < p.len() { p[k] } else { rng.next() };
                acc = (acc ^ t)
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    .wrapping_add(1);
                StoredBlock {
                    block_hash: acc,
                    tokens_hash: t,
                    mm_extra_info: None,
                }
            })
            .collect();
        blocks_total += n as u64;
        events.push(RouterEvent {
            worker_id: w,
            event_id: i as u64,
            dp_rank: 0,
            data: EventData::Stored {
                parent_hash: None,
                blocks,
            },
        });
    }
    let mut idx = RadixIndex::new();
    let t = Instant::now();
    for e in &events {
        idx.apply_event(e);
    }
    let secs = t.elapsed().as_secs_f64();
    let mut lat: Vec<u64> = Vec::with_capacity(n_queries);
    let mut found = 0usize;
    for _ in 0..n_queries {
        let p = &prefixes[rng.below(50) as usize];
        let q: Vec<u64> = p
            .iter()
            .copied()
            .chain((0..56).map(|_| rng.next()))
            .collect();
        let t = Instant::now();
        found += idx.find_matches(&q, false).len();
        lat.push(t.elapsed().as_nanos() as u64);
    }
    lat.sort_unstable();
    println!(
        "{{\"apply_blocks_per_s\":{:.0},\"entries\":{},\"heap_bytes\":{},\"find_p50_ns\":{},\"find_p99_ns\":{},\"matches\":{}}}",
        blocks_total as f64 / secs,
        idx.size(),
        idx.heap_bytes(),
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100],
        found
    );
}
