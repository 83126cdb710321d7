//! The pure-Rust side of `npm run bench`: ingests the standard workload (a file of u32-LE
//! length-prefixed engine batches written by bench/run.ts) through `Ingestor::ingest_packed` (the output
//! in a buffer the ingestor reuses, as the binding's calls use it) in a loop for
//! at least the given number of milliseconds, reading each output as the Node side's publisher-like
//! consumer reads each `IngestResult` (every payload's length, the dp rank, whether there is a first
//! event id, the warnings), and prints one JSON line with the rates and what the first (warm-up) pass
//! read, which bench/run.ts checks against the public API's first pass over the same batches.
//!
//! cargo run --release --example bench_ingest -- <batches.bin> <blocks in the file> [ms] [event-plane|jetstream]
//!
//! With `BENCH_OWNED_PAYLOADS=N` the timed passes also copy every payload into memory of its own and keep
//! the last N of them, as a Rust publisher must whose NATS client holds payloads until it flushes (the
//! public API's results own their memory in the same way); bench/run.ts does not set it.

use std::collections::VecDeque;
use std::time::Instant;

use dynamo_kv_core::ingest::{Ingestor, IngestorConfig, Mode, OUT_HEADER_BYTES};

/// CPU time of this (single-threaded) process in seconds, from /proc/self/schedstat (ns on CPU), so
/// that a rate stays meaningful on a shared machine where the process waits for a core.
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/schedstat")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|x| x.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |ns| ns / 1e9)
}

/// What the consumer read (bench/run.ts `Tally`).
#[derive(Default, Clone, Copy)]
struct Tally {
    bytes: u64,
    views: u64,
    no_id: u64,
    ranks: u64,
    warnings: u64,
}

fn u32_at(out: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(out[at..at + 4].try_into().unwrap())
}

/// Reads a packed output (layout in ts/core/binding.ts) as bench/run.ts `publishLike` reads a result.
fn consume(out: &[u8], t: &mut Tally) {
    let n = u32_at(out, 0) as usize;
    let flags = u32_at(out, 8);
    let lens_at = out.len() - 4 * n;
    let mut payloads_end = OUT_HEADER_BYTES;
    for i in 0..n {
        payloads_end += u32_at(out, lens_at + 4 * i) as usize;
    }
    if n > 0 {
        t.bytes += (payloads_end - OUT_HEADER_BYTES) as u64;
        t.views += n as u64;
        t.ranks += u64::from(u32_at(out, 4));
        t.no_id += u64::from(flags & 1 == 0);
    }
    if flags & 2 != 0 {
        let end = payloads_end + u32_at(out, 12) as usize;
        let mut at = payloads_end;
        while at < end {
            t.warnings += 1;
            at += 4 + u32_at(out, at) as usize;
        }
    }
}

/// Copies each payload of a packed output into a Vec of its own, keeping the last `keep` of them.
fn own_payloads(out: &[u8], keep: usize, kept: &mut VecDeque<Vec<u8>>) {
    let n = u32_at(out, 0) as usize;
    let lens_at = out.len() - 4 * n;
    let mut at = OUT_HEADER_BYTES;
    for i in 0..n {
        let len = u32_at(out, lens_at + 4 * i) as usize;
        kept.push_back(out[at..at + len].to_vec());
        if kept.len() > keep {
            kept.pop_front();
        }
        at += len;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: bench_ingest <batches.bin> <blocks> [ms] [event-plane|jetstream]");
        std::process::exit(2);
    }
    let data = std::fs::read(&args[1]).expect("read batches");
    let blocks_per_pass: u64 = args[2].parse().expect("blocks");
    let min_ms: u128 = args.get(3).map_or(2000, |s| s.parse().expect("ms"));
    let mode = if args.get(4).map(String::as_str) == Some("jetstream") {
        Mode::JetStream
    } else {
        Mode::EventPlane
    };
    let mut batches = Vec::new();
    let mut at = 0;
    while at + 4 <= data.len() {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        batches.push(&data[at + 4..at + 4 + len]);
        at += 4 + len;
    }
    let mut ing = Ingestor::new(IngestorConfig {
        kv_block_size: 16,
        worker_id: 7,
        mode,
        max_dp_ranks: 64,
        dp_ranks: None,
        local_indexer: None,
        ..IngestorConfig::new(16, 7)
    })
    .unwrap();
    // warm-up pass, whose reads are reported
    let mut first = Tally::default();
    for b in &batches {
        consume(ing.ingest_packed(b, 1_700_000_000_000), &mut first);
    }
    let keep: usize = std::env::var("BENCH_OWNED_PAYLOADS").ok().map_or(0, |s| {
        s.parse().expect("BENCH_OWNED_PAYLOADS must be a count")
    });
    let mut kept = VecDeque::with_capacity(keep + 1);
    let mut sink = Tally::default();
    let start = Instant::now();
    let cpu_start = cpu_seconds();
    let mut passes = 0u64;
    // one long-lived Ingestor, as in a sidecar: its per-rank state stays warm across passes
    while start.elapsed().as_millis() < min_ms {
        for b in &batches {
            let out = ing.ingest_packed(b, 1_700_000_000_000);
            consume(out, &mut sink);
            if keep > 0 {
                own_payloads(out, keep, &mut kept);
            }
        }
        passes += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_start;
    println!(
        "{{\"blocks_per_s\":{:.0},\"blocks_per_cpu_s\":{:.0},\"batches_per_s\":{:.0},\"passes\":{},\"seconds\":{:.3},\"sink\":{},\"first_pass\":{{\"bytes\":{},\"views\":{},\"noId\":{},\"ranks\":{},\"warnings\":{}}}}}",
        (blocks_per_pass * passes) as f64 / secs,
        (blocks_per_pass * passes) as f64 / cpu,
        (batches.len() as u64 * passes) as f64 / secs,
        passes,
        secs,
        sink.bytes + sink.views + sink.no_id + sink.ranks + sink.warnings,
        first.bytes,
        first.views,
        first.no_id,
        first.ranks,
        first.warnings
    );
}
