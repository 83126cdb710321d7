//! This core's `RadixIndex` side by side with Dynamo 1.6.1's `RadixTree` and its router default,
//! `ThreadPoolIndexer<ConcurrentRadixTreeCompressed>`, on one in-memory event stream (src/lib.rs),
//! in alternating rounds. Only the public API of `dynamo_kv_core::index` is used.
//!
//! CARGO_TARGET_DIR=target/compat cargo run --release --manifest-path crates/bench-dynamo-1.6/Cargo.toml
//!
//! Environment: BENCH_ROUNDS (default 3), BENCH_QUERIES (20000), BENCH_ENTRIES (1000000),
//! BENCH_CRTC_THREADS (4, the router's default event threads), BENCH_QPS (50000: the lookup rate
//! while a writer applies), BENCH_IMPLS (core,tree,crtc) and BENCH_WORKLOADS (a,b) to run only some,
//! BENCH_PUBLISH_OPS and BENCH_PUBLISH_US (the shared index's publish policy; default
//! `PublishPolicy::default()`), BENCH_BREAKDOWN (set: print this core's heap by part after its first
//! build), BENCH_BUILD_ONLY=N (only the build stream: N alternations of this core reading the trace
//! in place, this core reading a fresh copy, and `RadixTree` reading a fresh copy, each into an
//! empty index; median and best of each, then exit: the apply comparison without the rounds' other
//! work in between).
//!
//! Every query's scores from this core are checked against the reference model on both
//! workloads (a mismatch fails the run); Dynamo's answers are compared too and their differences
//! reported.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bench_dynamo_1_6::{
    core_scores, dynamo_scores, to_dynamo, to_local, Disagreement, RefOutcome, Reference, Scores,
    Trace, TraceConfig,
};
use dynamo_kv_core::index::{ApplyOutcome, RadixIndex};
use dynamo_kv_core::index_shared::{PublishPolicy, SharedReader, SharedWriter};
use dynamo_kv_core::RouterEvent;
use dynamo_kv_router::protocols::{LocalBlockHash, RouterEvent as DynEvent};
use dynamo_kv_router::{ConcurrentRadixTreeCompressed, RadixTree, SyncIndexer, ThreadPoolIndexer};

/// Counts the bytes allocated and not yet freed, on every thread.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        System.alloc_zeroed(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes held: allocated and not yet freed, plus what this core's index maps outside the allocator
/// (its large arrays, in huge pages).
fn live() -> isize {
    LIVE.load(Ordering::Relaxed) + dynamo_kv_core::index::mapped_bytes() as isize
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Impl {
    Core,
    Tree,
    Crtc,
}

const IMPLS: [Impl; 3] = [Impl::Core, Impl::Tree, Impl::Crtc];

/// One round's figures of one implementation (NaN: not measured).
#[derive(Clone, Copy)]
struct Round {
    build_rate: f64,
    build_cpu_rate: f64,
    mixed_rate: f64,
    mixed_cpu_rate: f64,
    p50_us: f64,
    p99_us: f64,
    bytes_per_entry: f64,
    heap_bytes_per_entry: f64,
    busy_p50_us: f64,
    busy_p99_us: f64,
    busy_writer_rate: f64,
    busy_queries: f64,
    /// This core behind a `Mutex` (the busy_* figures are its `SharedWriter`'s)
    mutex_p50_us: f64,
    mutex_p99_us: f64,
    mutex_writer_rate: f64,
    shared_build_cpu_rate: f64,
    shared_bytes_per_entry: f64,
    /// The SharedReader at the same pace with no writer (what the machine gives without one)
    idle_p50_us: f64,
    idle_p99_us: f64,
    /// The SharedReader while a writer thread applies the mixed stream to another, unshared index
    /// (the neighbour core's load alone, no sharing)
    apart_p50_us: f64,
    apart_p99_us: f64,
}

const NAN_ROUND: Round = Round {
    build_rate: f64::NAN,
    build_cpu_rate: f64::NAN,
    mixed_rate: f64::NAN,
    mixed_cpu_rate: f64::NAN,
    p50_us: f64::NAN,
    p99_us: f64::NAN,
    bytes_per_entry: f64::NAN,
    heap_bytes_per_entry: f64::NAN,
    busy_p50_us: f64::NAN,
    busy_p99_us: f64::NAN,
    busy_writer_rate: f64::NAN,
    busy_queries: f64::NAN,
    mutex_p50_us: f64::NAN,
    mutex_p99_us: f64::NAN,
    mutex_writer_rate: f64::NAN,
    shared_build_cpu_rate: f64::NAN,
    shared_bytes_per_entry: f64::NAN,
    idle_p50_us: f64::NAN,
    idle_p99_us: f64::NAN,
    apart_p50_us: f64::NAN,
    apart_p99_us: f64::NAN,
};

/// What the reference answers, and Dynamo's departures from it.
struct Check {
    after_build: Vec<Scores>,
    after_mixed: Vec<Scores>,
    entries: usize,
    ref_outcomes: HashMap<RefOutcome, usize>,
    dynamo_outcomes: HashMap<String, usize>,
    tree: [Disagreement; 2],
    crtc: [Disagreement; 2],
}

struct Workload {
    name: &'static str,
    trace: Trace,
    build_dyn: Vec<DynEvent>,
    mixed_dyn: Vec<DynEvent>,
    queries_dyn: Vec<Vec<LocalBlockHash>>,
    late_dyn: Vec<Vec<LocalBlockHash>>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn latencies(mut ns: Vec<f64>) -> (f64, f64) {
    ns.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (percentile(&ns, 0.5) / 1e3, percentile(&ns, 0.99) / 1e3)
}

/// Times `f` per query after a warm-up pass over the first 2000 queries.
fn time_queries<Q>(queries: &[Q], mut f: impl FnMut(&Q) -> usize) -> (f64, f64) {
    let mut sink = 0usize;
    for q in queries.iter().take(2000) {
        sink += f(q);
    }
    let mut ns = Vec::with_capacity(queries.len());
    for q in queries {
        let t = Instant::now();
        sink += f(q);
        ns.push(t.elapsed().as_nanos() as f64);
    }
    std::hint::black_box(sink);
    latencies(ns)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn new_crtc(threads: usize) -> ThreadPoolIndexer<ConcurrentRadixTreeCompressed> {
    // block size only matters for the router's own request hashing, which queries here skip
    ThreadPoolIndexer::new(ConcurrentRadixTreeCompressed::new(), threads, 16)
}

/// CPU seconds of the whole process (every thread: the thread pool's too).
fn process_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Wall and process CPU seconds of a stretch of work.
#[derive(Clone, Copy)]
struct Span {
    wall: f64,
    cpu: f64,
}

struct Clock(Instant, f64);

impl Clock {
    fn start() -> Self {
        Clock(Instant::now(), process_cpu())
    }
    fn stop(&self) -> Span {
        Span {
            wall: self.0.elapsed().as_secs_f64(),
            cpu: process_cpu() - self.1,
        }
    }
}

/// Blocks per second of wall time and of process CPU time.
fn rates(blocks: u64, s: Span) -> (f64, f64) {
    (blocks as f64 / s.wall, blocks as f64 / s.cpu)
}

fn core_apply(idx: &mut RadixIndex, evs: &[RouterEvent]) -> Span {
    let t = Clock::start();
    for e in evs {
        std::hint::black_box(idx.apply_event(e));
    }
    t.stop()
}

fn shared_apply(w: &mut SharedWriter, evs: &[RouterEvent]) -> Span {
    let t = Clock::start();
    for e in evs {
        std::hint::black_box(w.apply_event(e));
    }
    w.publish();
    t.stop()
}

fn check_shared(r: &mut SharedReader, queries: &[Vec<u64>], want: &[Scores], when: &str) {
    for (i, (q, e)) in queries.iter().zip(want).enumerate() {
        let got = core_scores(r.find_matches(q, false));
        assert_eq!(
            &got, e,
            "{when}: query {i}: the shared index's scores differ from the reference"
        );
    }
}

fn core_apply_checked(idx: &mut RadixIndex, evs: &[RouterEvent]) {
    for (i, e) in evs.iter().enumerate() {
        let o = idx.apply_event(e);
        assert_eq!(o, ApplyOutcome::Applied, "event {i}: the core says {o:?}");
    }
}

/// Dynamo's apply consumes its events: they are cloned before the clock starts.
fn tree_apply(
    tree: &mut RadixTree,
    evs: Vec<DynEvent>,
    outcomes: Option<&mut HashMap<String, usize>>,
) -> Span {
    let t = Clock::start();
    match outcomes {
        None => {
            for e in evs {
                let _ = std::hint::black_box(tree.apply_event(e));
            }
        }
        Some(o) => {
            for e in evs {
                let r = tree.apply_event(e);
                *o.entry(format!("RadixTree {r:?}")).or_default() += 1;
            }
        }
    }
    t.stop()
}

fn crtc_apply(
    rt: &tokio::runtime::Runtime,
    ix: &ThreadPoolIndexer<ConcurrentRadixTreeCompressed>,
    evs: Vec<DynEvent>,
) -> Span {
    let t = Clock::start();
    for e in evs {
        ix.enqueue_event(e).unwrap();
    }
    rt.block_on(ix.flush_and_wait()).unwrap();
    t.stop()
}

fn reference(w: &Workload) -> Check {
    let mut r = Reference::new();
    let mut ref_outcomes = HashMap::new();
    for e in &w.trace.build {
        *ref_outcomes.entry(r.apply(e)).or_default() += 1;
    }
    let entries = r.entries();
    let after_build = w.trace.queries.iter().map(|q| r.scores(q)).collect();
    for e in &w.trace.mixed {
        *ref_outcomes.entry(r.apply(e)).or_default() += 1;
    }
    let after_mixed = w.trace.late_queries.iter().map(|q| r.scores(q)).collect();
    Check {
        after_build,
        after_mixed,
        entries,
        ref_outcomes,
        dynamo_outcomes: HashMap::new(),
        tree: Default::default(),
        crtc: Default::default(),
    }
}

fn check_core(idx: &mut RadixIndex, queries: &[Vec<u64>], want: &[Scores], when: &str) {
    for (i, (q, e)) in queries.iter().zip(want).enumerate() {
        let got = core_scores(idx.find_matches_ref(q, false));
        assert_eq!(
            &got, e,
            "{when}: query {i}: this core's scores differ from the reference"
        );
    }
}

/// Lookups at a steady request rate (BENCH_QPS, default 50,000/s: one every 20 µs, spinning in
/// between, as a busy router thread, without holding anything) until `done`; the latency of each.
fn paced_reader(done: &AtomicBool, n: usize, mut f: impl FnMut(usize) -> usize) -> Vec<f64> {
    let every = Duration::from_secs_f64(1.0 / env("BENCH_QPS", 50_000) as f64);
    let mut ns = Vec::new();
    let mut next = Instant::now();
    let mut i = 0;
    while !done.load(Ordering::Acquire) {
        while Instant::now() < next {
            std::hint::spin_loop();
        }
        let t = Instant::now();
        next = (next + every).max(t); // after a stall, no burst to catch up
        std::hint::black_box(f(i % n));
        ns.push(t.elapsed().as_nanos() as f64);
        i += 1;
    }
    ns
}

/// Under one writer thread (`write` applies the mixed stream and returns its wall seconds), paced
/// lookups by `read`: the reader's p50 and p99, the writer's rate and how many lookups ran, into `r`.
fn busy(
    r: &mut Round,
    w: &Workload,
    n_queries: usize,
    write: impl FnOnce() -> f64 + Send,
    read: impl FnMut(usize) -> usize,
) {
    let done = AtomicBool::new(false);
    let (ns, writer_secs) = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let secs = write();
            done.store(true, Ordering::Release);
            secs
        });
        let ns = paced_reader(&done, n_queries, read);
        (ns, h.join().unwrap())
    });
    r.busy_queries = ns.len() as f64;
    (r.busy_p50_us, r.busy_p99_us) = latencies(ns);
    r.busy_writer_rate = w.trace.mixed_blocks as f64 / writer_secs;
}

fn round(
    w: &Workload,
    which: Impl,
    check: Option<&mut Check>,
    entries: usize,
    crtc_threads: usize,
) -> Round {
    let mut r = NAN_ROUND;
    let t = &w.trace;
    let rt = rt();
    match which {
        Impl::Core => {
            // each timed stream is a copy made just before the clock starts, as Dynamo's are
            // (its apply consumes them): both read their events from the same cache state
            let evs = t.build.clone();
            let before = live();
            let mut idx = RadixIndex::new();
            (r.build_rate, r.build_cpu_rate) = rates(t.build_blocks, core_apply(&mut idx, &evs));
            r.bytes_per_entry = (live() - before) as f64 / entries as f64;
            drop(evs);
            r.heap_bytes_per_entry = idx.heap_bytes() as f64 / entries as f64;
            if std::env::var_os("BENCH_BREAKDOWN").is_some() {
                for (k, v) in idx.heap_breakdown() {
                    println!("  {k}: {v} ({:.1} per entry)", v as f64 / entries as f64);
                }
            }
            assert_eq!(
                idx.size() as usize,
                entries,
                "this core's size differs from the reference's entries"
            );
            if let Some(c) = check.as_deref() {
                check_core(
                    &mut idx,
                    &t.queries,
                    &c.after_build,
                    "after the build stream",
                );
            }
            (r.p50_us, r.p99_us) =
                time_queries(&t.queries, |q| idx.find_matches_ref(q, false).len());
            let evs = t.mixed.clone();
            (r.mixed_rate, r.mixed_cpu_rate) = rates(t.mixed_blocks, core_apply(&mut idx, &evs));
            drop(evs);
            if let Some(c) = check.as_deref() {
                check_core(
                    &mut idx,
                    &t.late_queries,
                    &c.after_mixed,
                    "after the mixed stream",
                );
                // and every event applies cleanly
                let mut again = RadixIndex::new();
                core_apply_checked(&mut again, &t.build);
                core_apply_checked(&mut again, &t.mixed);
            }
            drop(idx);
            let mut idx = RadixIndex::new();
            core_apply(&mut idx, &t.build);
            // find_matches_ref takes &mut self: readers and the writer share one mutex
            let idx = Mutex::new(idx);
            let mut m = NAN_ROUND;
            busy(
                &mut m,
                w,
                t.queries.len(),
                || {
                    let c = Instant::now();
                    for e in &t.mixed {
                        idx.lock().unwrap().apply_event(e);
                    }
                    c.elapsed().as_secs_f64()
                },
                |i| {
                    idx.lock()
                        .unwrap()
                        .find_matches_ref(&t.queries[i], false)
                        .len()
                },
            );
            (r.mutex_p50_us, r.mutex_p99_us, r.mutex_writer_rate) =
                (m.busy_p50_us, m.busy_p99_us, m.busy_writer_rate);
            drop(idx);
            // the shared index (two copies, a writer that never waits for a lock and readers that
            // never wait at all): the writer thread applies the mixed stream, publishing as it goes
            let before = live();
            let d = PublishPolicy::default();
            let mut writer = SharedWriter::with_policy(PublishPolicy {
                max_ops: env("BENCH_PUBLISH_OPS", d.max_ops),
                max_delay: Some(Duration::from_micros(env(
                    "BENCH_PUBLISH_US",
                    d.max_delay.map_or(0, |t| t.as_micros() as usize),
                ) as u64)),
            });
            let mut reader = writer.reader();
            r.shared_build_cpu_rate =
                t.build_blocks as f64 / shared_apply(&mut writer, &t.build).cpu;
            writer.catch_up();
            r.shared_bytes_per_entry = (live() - before) as f64 / entries as f64;
            if let Some(c) = check.as_deref() {
                check_shared(
                    &mut reader,
                    &t.queries,
                    &c.after_build,
                    "after the build stream",
                );
            }
            let mut idle = NAN_ROUND;
            busy(
                &mut idle,
                w,
                t.queries.len(),
                || {
                    std::thread::sleep(Duration::from_millis(500));
                    1.0
                },
                |i| reader.find_matches(&t.queries[i], false).len(),
            );
            (r.idle_p50_us, r.idle_p99_us) = (idle.busy_p50_us, idle.busy_p99_us);
            let mut other = RadixIndex::new();
            core_apply(&mut other, &t.build);
            let mut apart = NAN_ROUND;
            busy(
                &mut apart,
                w,
                t.queries.len(),
                || core_apply(&mut other, &t.mixed).wall,
                |i| reader.find_matches(&t.queries[i], false).len(),
            );
            drop(other);
            (r.apart_p50_us, r.apart_p99_us) = (apart.busy_p50_us, apart.busy_p99_us);
            busy(
                &mut r,
                w,
                t.queries.len(),
                || {
                    let c = Instant::now();
                    for e in &t.mixed {
                        writer.apply_event(e);
                    }
                    writer.publish();
                    c.elapsed().as_secs_f64()
                },
                |i| reader.find_matches(&t.queries[i], false).len(),
            );
            if let Some(c) = check.as_deref() {
                check_shared(
                    &mut reader,
                    &t.late_queries,
                    &c.after_mixed,
                    "after the mixed stream",
                );
            }
        }
        Impl::Tree => {
            let before = live();
            let evs = w.build_dyn.clone();
            let mut tree = RadixTree::new();
            let mut check = check;
            let span = tree_apply(
                &mut tree,
                evs,
                check.as_mut().map(|c| &mut c.dynamo_outcomes),
            );
            (r.build_rate, r.build_cpu_rate) = rates(t.build_blocks, span);
            r.bytes_per_entry = (live() - before) as f64 / entries as f64;
            if let Some(c) = check.as_mut() {
                for (q, e) in w.queries_dyn.iter().zip(&c.after_build) {
                    c.tree[0].add(&dynamo_scores(&tree.find_matches(q.clone(), false)), e);
                }
            }
            (r.p50_us, r.p99_us) = {
                // the query is owned by the call: its copy is made outside the clock
                let mut owned: Vec<Vec<LocalBlockHash>> = Vec::new();
                let mut sink = 0usize;
                let mut ns = Vec::with_capacity(w.queries_dyn.len());
                for pass in 0..2 {
                    owned.extend(
                        w.queries_dyn
                            .iter()
                            .take(if pass == 0 { 2000 } else { usize::MAX })
                            .cloned(),
                    );
                    for q in owned.drain(..) {
                        let t0 = Instant::now();
                        sink += tree.find_matches(q, false).scores.len();
                        if pass == 1 {
                            ns.push(t0.elapsed().as_nanos() as f64);
                        }
                    }
                }
                std::hint::black_box(sink);
                latencies(ns)
            };
            let evs = w.mixed_dyn.clone();
            let span = tree_apply(
                &mut tree,
                evs,
                check.as_mut().map(|c| &mut c.dynamo_outcomes),
            );
            (r.mixed_rate, r.mixed_cpu_rate) = rates(t.mixed_blocks, span);
            if let Some(c) = check {
                for (q, e) in w.late_dyn.iter().zip(&c.after_mixed) {
                    c.tree[1].add(&dynamo_scores(&tree.find_matches(q.clone(), false)), e);
                }
            }
        }
        Impl::Crtc => {
            let before = live();
            let ix = new_crtc(crtc_threads);
            let span = crtc_apply(&rt, &ix, w.build_dyn.clone());
            (r.build_rate, r.build_cpu_rate) = rates(t.build_blocks, span);
            r.bytes_per_entry = (live() - before) as f64 / entries as f64;
            let mut check = check;
            if let Some(c) = check.as_mut() {
                for (q, e) in w.queries_dyn.iter().zip(&c.after_build) {
                    c.crtc[0].add(&dynamo_scores(&ix.backend().find_matches(q, false)), e);
                }
            }
            (r.p50_us, r.p99_us) = time_queries(&w.queries_dyn, |q| {
                ix.backend().find_matches(q, false).scores.len()
            });
            let span = crtc_apply(&rt, &ix, w.mixed_dyn.clone());
            (r.mixed_rate, r.mixed_cpu_rate) = rates(t.mixed_blocks, span);
            if let Some(c) = check {
                for (q, e) in w.late_dyn.iter().zip(&c.after_mixed) {
                    c.crtc[1].add(&dynamo_scores(&ix.backend().find_matches(q, false)), e);
                }
            }
            drop(ix);
            let ix = new_crtc(crtc_threads);
            crtc_apply(&rt, &ix, w.build_dyn.clone());
            let (ix, rt, evs) = (&ix, &rt, w.mixed_dyn.clone());
            busy(
                &mut r,
                w,
                w.queries_dyn.len(),
                move || crtc_apply(rt, ix, evs).wall,
                |i| {
                    ix.backend()
                        .find_matches(&w.queries_dyn[i], false)
                        .scores
                        .len()
                },
            );
        }
    }
    r
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU".into(), |s| s.trim().to_string());
    let n = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{n} x {model}")
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(", ")
}

/// "median (min–max)" of a figure, scaled.
fn cell(v: &[f64], scale: f64, digits: usize) -> String {
    let mut v: Vec<f64> = v
        .iter()
        .copied()
        .filter(|x| !x.is_nan())
        .map(|x| x * scale)
        .collect();
    if v.is_empty() {
        return "-".into();
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let med = v[v.len() / 2];
    format!(
        "{med:.digits$} ({:.digits$}–{:.digits$})",
        v[0],
        v[v.len() - 1]
    )
}

fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn print_table(w: &Workload, rounds: &HashMap<Impl, Vec<Round>>) {
    let get = |i: Impl, f: fn(&Round) -> f64| {
        rounds
            .get(&i)
            .map_or(Vec::new(), |r| r.iter().map(f).collect::<Vec<f64>>())
    };
    type Row = (&'static str, fn(&Round) -> f64, f64, usize);
    let rows: [Row; 21] = [
        (
            "apply, build stream (M blocks/s, wall)",
            |r| r.build_rate,
            1e-6,
            2,
        ),
        (
            "apply, build stream (M blocks/s of process CPU)",
            |r| r.build_cpu_rate,
            1e-6,
            2,
        ),
        (
            "apply, mixed stream (M blocks/s, wall)",
            |r| r.mixed_rate,
            1e-6,
            2,
        ),
        (
            "apply, mixed stream (M blocks/s of process CPU)",
            |r| r.mixed_cpu_rate,
            1e-6,
            2,
        ),
        ("find_matches, 64 blocks, p50 (µs)", |r| r.p50_us, 1.0, 2),
        ("find_matches, 64 blocks, p99 (µs)", |r| r.p99_us, 1.0, 2),
        (
            "bytes per (worker, block) entry, counting allocator",
            |r| r.bytes_per_entry,
            1.0,
            1,
        ),
        (
            "bytes per entry by heap_bytes()",
            |r| r.heap_bytes_per_entry,
            1.0,
            1,
        ),
        (
            "find_matches p50 under one writer (µs; this core: SharedReader)",
            |r| r.busy_p50_us,
            1.0,
            2,
        ),
        (
            "find_matches p99 under one writer (µs; this core: SharedReader)",
            |r| r.busy_p99_us,
            1.0,
            2,
        ),
        (
            "writer's apply rate meanwhile (M blocks/s)",
            |r| r.busy_writer_rate,
            1e-6,
            2,
        ),
        (
            "queries timed under the writer (k)",
            |r| r.busy_queries,
            1e-3,
            1,
        ),
        (
            "SharedReader at that pace with no writer: find_matches p50 (µs)",
            |r| r.idle_p50_us,
            1.0,
            2,
        ),
        (
            "SharedReader at that pace with no writer: find_matches p99 (µs)",
            |r| r.idle_p99_us,
            1.0,
            2,
        ),
        (
            "SharedReader while a writer applies to another index: p50 (µs)",
            |r| r.apart_p50_us,
            1.0,
            2,
        ),
        (
            "SharedReader while a writer applies to another index: p99 (µs)",
            |r| r.apart_p99_us,
            1.0,
            2,
        ),
        (
            "this core behind a Mutex: find_matches p50 under one writer (µs)",
            |r| r.mutex_p50_us,
            1.0,
            2,
        ),
        (
            "this core behind a Mutex: find_matches p99 under one writer (µs)",
            |r| r.mutex_p99_us,
            1.0,
            2,
        ),
        (
            "this core behind a Mutex: writer's apply rate meanwhile (M blocks/s)",
            |r| r.mutex_writer_rate,
            1e-6,
            2,
        ),
        (
            "SharedWriter, build stream, no reader (M blocks/s of process CPU)",
            |r| r.shared_build_cpu_rate,
            1e-6,
            2,
        ),
        (
            "SharedWriter: bytes per entry, both copies and the log",
            |r| r.shared_bytes_per_entry,
            1.0,
            1,
        ),
    ];
    println!("\n#### {}\n", w.name);
    println!("| median (min–max) of {} rounds | this core | Dynamo RadixTree | Dynamo ThreadPoolIndexer<CRTC> | RadixTree / core | CRTC / core |", rounds.values().map(|r| r.len()).max().unwrap_or(0));
    println!("|---|---|---|---|---|---|");
    for (name, f, scale, digits) in rows {
        let (c, t, x) = (get(Impl::Core, f), get(Impl::Tree, f), get(Impl::Crtc, f));
        let ratio = |o: &[f64]| {
            let r = median(o) / median(&c);
            if r.is_nan() {
                "-".into()
            } else {
                format!("{r:.2}")
            }
        };
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            cell(&c, scale, digits),
            cell(&t, scale, digits),
            cell(&x, scale, digits),
            ratio(&t),
            ratio(&x)
        );
    }
    // Each round measures the three back to back: a round's own ratio pairs figures taken seconds
    // apart, where the medians above may pair a quiet round with a busy one.
    let (c, t) = (&rounds.get(&Impl::Core), &rounds.get(&Impl::Tree));
    if let (Some(c), Some(t)) = (c, t) {
        for (name, f) in [
            ("build", (|r| r.build_rate) as fn(&Round) -> f64),
            ("mixed", |r| r.mixed_rate),
        ] {
            let per: Vec<f64> = c.iter().zip(t.iter()).map(|(c, t)| f(c) / f(t)).collect();
            let list: Vec<String> = per.iter().map(|x| format!("{x:.2}")).collect();
            println!(
                "\ncore / RadixTree apply rate ({name} stream, wall), round by round: {} (median {:.2})",
                list.join(", "),
                median(&per)
            );
        }
    }
}

fn print_check(w: &Workload, c: &Check, core_ran: bool) {
    let mut o: Vec<_> = c.dynamo_outcomes.iter().collect();
    o.sort();
    let mut ro: Vec<_> = c
        .ref_outcomes
        .iter()
        .map(|(k, v)| format!("{k:?}: {v}"))
        .collect();
    ro.sort();
    println!("\n{}: reference outcomes {{{}}}", w.name, ro.join(", "));
    if core_ran {
        println!("this core (RadixIndex, and SharedReader after the SharedWriter published) agreed with the reference on all {} + {} queries", c.after_build.len(), c.after_mixed.len());
    }
    println!("Dynamo RadixTree apply outcomes (build + mixed): {o:?}");
    for (name, d) in [("RadixTree", &c.tree), ("ThreadPoolIndexer<CRTC>", &c.crtc)] {
        for (when, d) in ["after the build stream", "after the mixed stream"]
            .iter()
            .zip(d.iter())
        {
            println!(
                "Dynamo {name} {when}: {} of {} queries differ from the reference; worker scores lower {} (blocks short {}), higher {} (blocks over {})",
                d.differing_queries, d.queries, d.lower, d.blocks_short, d.higher, d.blocks_over
            );
        }
    }
}

/// BENCH_BUILD_ONLY: the build stream alone, `n` alternations of this core reading the trace in
/// place, this core reading a fresh copy, and `RadixTree` reading (consuming) a fresh copy, each into
/// an empty index.
fn build_only(w: &Workload, n: usize) {
    let mut res = [Vec::new(), Vec::new(), Vec::new()];
    for i in 0..n {
        for k in 0..3 {
            let which = (i + k) % 3;
            let blocks = w.trace.build_blocks as f64;
            let rate = match which {
                0 => {
                    let mut idx = RadixIndex::new();
                    blocks / core_apply(&mut idx, &w.trace.build).wall
                }
                1 => {
                    let evs = w.trace.build.clone();
                    let mut idx = RadixIndex::new();
                    blocks / core_apply(&mut idx, &evs).wall
                }
                _ => {
                    let evs = w.build_dyn.clone();
                    let mut tree = RadixTree::new();
                    blocks / tree_apply(&mut tree, evs, None).wall
                }
            };
            res[which].push(rate / 1e6);
        }
    }
    println!(
        "\n{}: the build stream alone, {n} alternations (M blocks/s, wall)\n",
        w.name
    );
    println!("| build stream into an empty index | median | best |\n|---|---|---|");
    let names = [
        "this core, reading the trace in place",
        "this core, reading a fresh copy",
        "Dynamo RadixTree, reading (consuming) a fresh copy",
    ];
    for (name, r) in names.iter().zip(&res) {
        let best = r.iter().copied().fold(0.0, f64::max);
        println!("| {name} | {:.2} | {best:.2} |", median(r));
    }
    let per: Vec<f64> = res[1].iter().zip(&res[2]).map(|(c, t)| c / t).collect();
    println!(
        "\nthis core (fresh copy) / RadixTree, alternation by alternation: median {:.2}, min {:.2}, max {:.2}",
        median(&per),
        per.iter().copied().fold(f64::INFINITY, f64::min),
        per.iter().copied().fold(0.0, f64::max)
    );
}

fn main() {
    let rounds_n = env("BENCH_ROUNDS", 3);
    let queries = env("BENCH_QUERIES", 20_000);
    let build_entries = env("BENCH_ENTRIES", 1_000_000);
    let crtc_threads = env("BENCH_CRTC_THREADS", 4);
    println!("machine: {}; load average at start: {}", machine(), load());
    // BENCH_IMPLS (core,tree,crtc) and BENCH_WORKLOADS (a,b) narrow a run (default: all)
    let impls_env = std::env::var("BENCH_IMPLS").unwrap_or_else(|_| "core,tree,crtc".into());
    let impls: Vec<Impl> = IMPLS
        .into_iter()
        .filter(|i| {
            let name = match i {
                Impl::Core => "core",
                Impl::Tree => "tree",
                Impl::Crtc => "crtc",
            };
            impls_env.split(',').any(|x| x.trim() == name)
        })
        .collect();
    let workloads_env = std::env::var("BENCH_WORKLOADS").unwrap_or_else(|_| "a,b".into());
    let mut workloads = Vec::new();
    for (key, name, per_worker) in [
        (
            "a",
            "(a) one block hash per token path (shared hash seed)",
            false,
        ),
        (
            "b",
            "(b) per-worker block hashes (each engine its own hash seed)",
            true,
        ),
    ] {
        if !workloads_env.split(',').any(|x| x.trim() == key) {
            continue;
        }
        let mut cfg = TraceConfig::standard(per_worker);
        cfg.queries = queries;
        cfg.capacity = cfg.capacity * build_entries / 1_000_000;
        cfg.mixed_blocks = cfg.mixed_blocks * build_entries / 1_000_000;
        cfg.build_entries = build_entries;
        let g = Instant::now();
        let trace = Trace::generate(cfg);
        let w = Workload {
            name,
            build_dyn: trace.build.iter().map(to_dynamo).collect(),
            mixed_dyn: trace.mixed.iter().map(to_dynamo).collect(),
            queries_dyn: trace.queries.iter().map(|q| to_local(q)).collect(),
            late_dyn: trace.late_queries.iter().map(|q| to_local(q)).collect(),
            trace,
        };
        let t = &w.trace;
        println!(
            "{name}: {} workers, cache {} blocks each; build stream {} events, {} blocks ({} removed); mixed stream {} events, {} blocks ({} removed); peak {} entries; {} queries of 64 blocks per set (generated in {:.1} s)",
            t.cfg.workers, t.cfg.capacity, t.build.len(), t.build_blocks, t.build_removed, t.mixed.len(), t.mixed_blocks, t.mixed_removed, t.peak_entries, t.queries.len(), g.elapsed().as_secs_f64()
        );
        workloads.push(w);
    }
    if let Some(n) = std::env::var("BENCH_BUILD_ONLY")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        for w in &workloads {
            build_only(w, n);
        }
        return;
    }
    let mut checks = Vec::new();
    for w in &workloads {
        let c = reference(w);
        let matched: Vec<usize> = c.after_build.iter().map(|s| s.len()).collect();
        let best: f64 = c
            .after_build
            .iter()
            .map(|s| s.iter().map(|x| x.2).max().unwrap_or(0) as f64)
            .sum::<f64>()
            / matched.len() as f64;
        println!(
            "{}: {} entries after the build stream; queries: {:.1} workers scored on average, best score {:.1} blocks on average",
            w.name,
            c.entries,
            matched.iter().sum::<usize>() as f64 / matched.len() as f64,
            best
        );
        checks.push(c);
    }
    for (w, c) in workloads.iter().zip(checks.iter_mut()) {
        let entries = c.entries;
        let mut rounds: HashMap<Impl, Vec<Round>> = HashMap::new();
        for r in 0..rounds_n {
            for which in IMPLS.into_iter().filter(|i| impls.contains(i)) {
                let check = (r == 0).then_some(&mut *c);
                let res = round(w, which, check, entries, crtc_threads);
                rounds.entry(which).or_default().push(res);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        print_table(w, &rounds);
        print_check(w, c, impls.contains(&Impl::Core));
    }
    println!("\nload average at the end: {}", load());
}
