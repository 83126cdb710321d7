//! The pure-Rust side of `npm run bench`: ingests the standard workload (a file of u32-LE
//! length-prefixed engine batches written by bench/run.ts) through `Ingestor::ingest` in a loop for
//! at least the given number of milliseconds, and prints one JSON line with the rates.
//!
//! cargo run --release --example bench_ingest -- <batches.bin> <blocks in the file> [ms] [event-plane|jetstream]

use std::time::Instant;

use dynamo_kv_core::ingest::{Ingestor, IngestorConfig, Mode};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: bench_ingest <batches.bin> <blocks> [ms] [event-plane|jetstream]");
        std::process::exit(2);
    }
    let data = std::fs::read(&args[1]).expect("read batches");
    let blocks_per_pass: u64 = args[2].parse().expect("blocks");
    let min_ms: u128 = args.get(3).map_or(2000, |s| s.parse().expect("ms"));
    let mode = if args.get(4).map(String::as_str) == Some("jetstream") { Mode::JetStream } else { Mode::EventPlane };
    let mut batches = Vec::new();
    let mut at = 0;
    while at + 4 <= data.len() {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        batches.push(&data[at + 4..at + 4 + len]);
        at += 4 + len;
    }
    let new_ingestor = || {
        Ingestor::new(IngestorConfig { kv_block_size: 16, worker_id: 7, mode, max_dp_ranks: 64, dp_ranks: None }).unwrap()
    };
    // warm-up pass
    let mut ing = new_ingestor();
    let mut sink = 0usize;
    for b in &batches {
        sink += ing.ingest(b, 1_700_000_000_000).len();
    }
    let start = Instant::now();
    let mut passes = 0u64;
    while start.elapsed().as_millis() < min_ms {
        let mut ing = new_ingestor();
        for b in &batches {
            sink += ing.ingest(b, 1_700_000_000_000).len();
        }
        passes += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"blocks_per_s\":{:.0},\"batches_per_s\":{:.0},\"passes\":{},\"seconds\":{:.3},\"sink\":{}}}",
        (blocks_per_pass * passes) as f64 / secs,
        (batches.len() as u64 * passes) as f64 / secs,
        passes,
        secs,
        sink
    );
}
