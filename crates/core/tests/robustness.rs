//! Robustness of the core against hostile input (SPEC 2.2 rules 4-5, SPEC 8): more than 1,000,000
//! random and mutated engine batches go through `engine::peek_batch`, `decode_engine_batch` and
//! `Ingestor::ingest` (plus the router-side `wire::decode_router_event_msgpack`), and for every one:
//!
//! - nothing panics, every outcome is a value;
//! - the three agree: `peek_batch(p).is_ok() == decode_engine_batch(p, bs).is_some() ==
//!   (unpack(ingest(p)).rejected[malformed] == 0)`, and they agree with an independent reference
//!   validator written here (own msgpack parser, depth limit 64, the SPEC 2.2 batch shape rules);
//! - a malformed batch is `dp_rank None, rejected = {malformed: 1}, no payloads`; an accepted one has
//!   its dp rank, the same rejections as `decode_engine_batch`, and exactly the payloads the decoded
//!   events imply (split at 1024 blocks / 4096 hashes, chained, ids consecutive from 0), which decode
//!   back (envelope or JSON) to those events; the counters add up;
//! - no single allocation is larger than the input justifies: a counting global allocator records the
//!   largest single request of this thread while the core processes one input, and it must stay within
//!   `64 * input.len() + 65536` bytes.
//!
//! Violations are collected per category (with the smallest reproducer seen) and reported at the end
//! of each test, so that one bug does not hide another. Seeds are fixed; set `DYNAMO_KV_FUZZ_SEED` to
//! explore others and `DYNAMO_KV_FUZZ_SCALE` (a float, default 1) to run more or fewer inputs. Run with
//! `-- --nocapture` to see the per-test statistics.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use dynamo_kv_core::convert::{decode_engine_batch, Converted, DecodedBatch, Reason};
use dynamo_kv_core::engine::{peek_batch, EngineEvent};
use dynamo_kv_core::ingest::{unpack, Ingestor, IngestorConfig, Mode, COUNTER_NAMES};
use dynamo_kv_core::msgpack::{Head, Reader, Writer, MAX_DEPTH};
use dynamo_kv_core::wire::{
    decode_router_event_json, decode_router_event_msgpack, EventData, RouterEvent,
};

// ================================================================================================
// the counting allocator: the largest single request per thread since the last reset

struct PeakAlloc;

thread_local! {
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

#[inline]
fn note(size: usize) {
    let _ = PEAK.try_with(|p| {
        if size > p.get() {
            p.set(size)
        }
    });
}

unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: PeakAlloc = PeakAlloc;

fn reset_peak() {
    PEAK.with(|p| p.set(0));
}

fn peak() -> usize {
    PEAK.with(|p| p.get())
}

fn alloc_budget(len: usize) -> usize {
    64 * len + 65536
}

// ================================================================================================
// seeded PRNG (splitmix64)

mod common;
use common::Rng;

/// A generator for one test's stream; DYNAMO_KV_FUZZ_SEED changes every stream at once.
fn seeded(stream: u64) -> Rng {
    let base = std::env::var("DYNAMO_KV_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0x5eed_d1a0_0c0f_fee5);
    let mut r = Rng(base ^ stream.wrapping_mul(0xa076_1d64_78bd_642f));
    r.next();
    r
}

fn scale(n: usize) -> usize {
    let s = std::env::var("DYNAMO_KV_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(1.0);
    ((n as f64) * s).max(1.0) as usize
}

// ================================================================================================
// an independent msgpack model: parser (with the depth rule) and encoder (any valid width)

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Nil,
    Bool(bool),
    Int(i128),
    F32(u32),
    F64(u64),
    Str(Vec<u8>),
    Bin(Vec<u8>),
    Ext(u8, Vec<u8>),
    Arr(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

fn take<'b>(b: &'b [u8], p: &mut usize, n: usize) -> Result<&'b [u8], ()> {
    if b.len() - *p < n {
        return Err(());
    }
    *p += n;
    Ok(&b[*p - n..*p])
}

fn be(b: &[u8], p: &mut usize, n: usize) -> Result<u64, ()> {
    Ok(take(b, p, n)?
        .iter()
        .fold(0u64, |a, &x| (a << 8) | x as u64))
}

/// One value at `level` (the batch is level 1); a value deeper than level 64 is an error. Containers
/// are filled element by element, never sized from their header.
fn parse(b: &[u8], p: &mut usize, level: u32) -> Result<Node, ()> {
    if level > 64 {
        return Err(());
    }
    let m = take(b, p, 1)?[0];
    let arr = |b: &[u8], p: &mut usize, n: u64| -> Result<Node, ()> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(parse(b, p, level + 1)?);
        }
        Ok(Node::Arr(v))
    };
    let map = |b: &[u8], p: &mut usize, n: u64| -> Result<Node, ()> {
        let mut v = Vec::new();
        for _ in 0..n {
            let k = parse(b, p, level + 1)?;
            v.push((k, parse(b, p, level + 1)?));
        }
        Ok(Node::Map(v))
    };
    Ok(match m {
        0x00..=0x7f => Node::Int(m as i128),
        0x80..=0x8f => map(b, p, (m & 15) as u64)?,
        0x90..=0x9f => arr(b, p, (m & 15) as u64)?,
        0xa0..=0xbf => Node::Str(take(b, p, (m & 31) as usize)?.to_vec()),
        0xc0 => Node::Nil,
        0xc1 => return Err(()),
        0xc2 => Node::Bool(false),
        0xc3 => Node::Bool(true),
        0xc4..=0xc6 => {
            let n = be(b, p, 1 << (m - 0xc4))? as usize;
            Node::Bin(take(b, p, n)?.to_vec())
        }
        0xc7..=0xc9 => {
            let n = be(b, p, 1 << (m - 0xc7))? as usize;
            let t = take(b, p, 1)?[0];
            Node::Ext(t, take(b, p, n)?.to_vec())
        }
        0xca => Node::F32(be(b, p, 4)? as u32),
        0xcb => Node::F64(be(b, p, 8)?),
        0xcc..=0xcf => Node::Int(be(b, p, 1 << (m - 0xcc))? as i128),
        0xd0 => Node::Int(be(b, p, 1)? as u8 as i8 as i128),
        0xd1 => Node::Int(be(b, p, 2)? as u16 as i16 as i128),
        0xd2 => Node::Int(be(b, p, 4)? as u32 as i32 as i128),
        0xd3 => Node::Int(be(b, p, 8)? as i64 as i128),
        0xd4..=0xd8 => {
            let t = take(b, p, 1)?[0];
            Node::Ext(t, take(b, p, 1 << (m - 0xd4))?.to_vec())
        }
        0xd9..=0xdb => {
            let n = be(b, p, 1 << (m - 0xd9))? as usize;
            Node::Str(take(b, p, n)?.to_vec())
        }
        0xdc | 0xdd => {
            let n = be(b, p, 2 << (m - 0xdc))?;
            arr(b, p, n)?
        }
        0xde | 0xdf => {
            let n = be(b, p, 2 << (m - 0xde))?;
            map(b, p, n)?
        }
        0xe0..=0xff => Node::Int(m as i8 as i128),
    })
}

fn parse_all(b: &[u8]) -> Result<Node, ()> {
    let mut p = 0;
    let n = parse(b, &mut p, 1)?;
    if p != b.len() {
        return Err(());
    }
    Ok(n)
}

/// The reference for SPEC 2.2: Ok(dp_rank) for an accepted batch, Err for a malformed one.
fn oracle(b: &[u8]) -> Result<u32, ()> {
    let rank = |n: &Node| match n {
        Node::Nil => Ok(0),
        Node::Int(v) if (0..=u32::MAX as i128).contains(v) => Ok(*v as u32),
        _ => Err(()),
    };
    match parse_all(b)? {
        Node::Arr(xs) => {
            if xs.len() < 2 || !matches!(xs[1], Node::Arr(_)) {
                return Err(());
            }
            xs.get(2).map_or(Ok(0), rank)
        }
        Node::Map(kv) => {
            let (mut events, mut dpr, mut dp) = (false, None, None);
            for (k, v) in &kv {
                if let Node::Str(k) = k {
                    match k.as_slice() {
                        b"events" => events = matches!(v, Node::Arr(_)),
                        b"data_parallel_rank" => dpr = Some(v),
                        b"dp_rank" => dp = Some(v),
                        _ => {}
                    }
                }
            }
            if !events {
                return Err(());
            }
            match (dpr, dp) {
                (Some(v), _) if *v != Node::Nil => rank(v),
                (_, Some(v)) => rank(v),
                _ => Ok(0),
            }
        }
        _ => Err(()),
    }
}

/// Encodes msgpack; with `any` set, every header takes a random valid width (non-minimal forms).
struct Enc<'r> {
    r: &'r mut Rng,
    any: bool,
}

impl Enc<'_> {
    fn int(&mut self, out: &mut Vec<u8>, v: i128) {
        let mut forms: Vec<u8> = Vec::with_capacity(10);
        if (0..=127).contains(&v) {
            forms.push(0x00);
        }
        if (-32..0).contains(&v) {
            forms.push(0xe0);
        }
        for (m, lo, hi) in [
            (0xccu8, 0i128, u8::MAX as i128),
            (0xcd, 0, u16::MAX as i128),
            (0xce, 0, u32::MAX as i128),
            (0xcf, 0, u64::MAX as i128),
            (0xd0, i8::MIN as i128, i8::MAX as i128),
            (0xd1, i16::MIN as i128, i16::MAX as i128),
            (0xd2, i32::MIN as i128, i32::MAX as i128),
            (0xd3, i64::MIN as i128, i64::MAX as i128),
        ] {
            if (lo..=hi).contains(&v) {
                forms.push(m);
            }
        }
        assert!(!forms.is_empty(), "integer out of msgpack range: {v}");
        // minimal: the first fitting form in the order fixint, negfixint, unsigned, signed
        let f = if self.any {
            *self.r.pick(&forms)
        } else if v >= 0 {
            forms[0]
        } else {
            *forms.iter().find(|&&m| m >= 0xd0 || m == 0xe0).unwrap()
        };
        match f {
            0x00 | 0xe0 => out.push(v as i8 as u8),
            0xcc..=0xcf => {
                out.push(f);
                let n = 1usize << (f - 0xcc);
                out.extend_from_slice(&(v as u64).to_be_bytes()[8 - n..]);
            }
            _ => {
                out.push(f);
                let n = 1usize << (f - 0xd0);
                out.extend_from_slice(&(v as i64).to_be_bytes()[8 - n..]);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn len_form(
        &mut self,
        n: usize,
        fix_max: usize,
        fix_base: u8,
        m8: Option<u8>,
        m16: u8,
        m32: u8,
        out: &mut Vec<u8>,
    ) {
        let mut forms: Vec<u8> = Vec::with_capacity(4);
        if n <= fix_max {
            forms.push(fix_base);
        }
        if let Some(m) = m8 {
            if n <= 0xff {
                forms.push(m);
            }
        }
        if n <= 0xffff {
            forms.push(m16);
        }
        forms.push(m32);
        let f = if self.any {
            *self.r.pick(&forms)
        } else {
            forms[0]
        };
        if f == fix_base {
            out.push(fix_base | n as u8);
        } else if Some(f) == m8 {
            out.extend_from_slice(&[f, n as u8]);
        } else if f == m16 {
            out.push(f);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(f);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }

    fn str(&mut self, out: &mut Vec<u8>, s: &[u8]) {
        self.len_form(s.len(), 31, 0xa0, Some(0xd9), 0xda, 0xdb, out);
        out.extend_from_slice(s);
    }

    fn bin(&mut self, out: &mut Vec<u8>, s: &[u8]) {
        // no fix form for bin: use bin8 as the "fix" slot
        let mut forms = vec![];
        if s.len() <= 0xff {
            forms.push(0xc4u8);
        }
        if s.len() <= 0xffff {
            forms.push(0xc5);
        }
        forms.push(0xc6);
        let f = if self.any {
            *self.r.pick(&forms)
        } else {
            forms[0]
        };
        out.push(f);
        let n = 1usize << (f - 0xc4);
        out.extend_from_slice(&(s.len() as u32).to_be_bytes()[4 - n..]);
        out.extend_from_slice(s);
    }

    fn ext(&mut self, out: &mut Vec<u8>, t: u8, data: &[u8]) {
        let fix = match data.len() {
            1 => Some(0xd4u8),
            2 => Some(0xd5),
            4 => Some(0xd6),
            8 => Some(0xd7),
            16 => Some(0xd8),
            _ => None,
        };
        match fix {
            Some(m) if !self.any || self.r.chance(50) => out.push(m),
            _ => {
                let f = if data.len() <= 0xff {
                    0xc7
                } else if data.len() <= 0xffff {
                    0xc8
                } else {
                    0xc9
                };
                out.push(f);
                let n = 1usize << (f - 0xc7);
                out.extend_from_slice(&(data.len() as u32).to_be_bytes()[4 - n..]);
            }
        }
        out.push(t);
        out.extend_from_slice(data);
    }

    fn arr(&mut self, out: &mut Vec<u8>, n: usize) {
        self.len_form(n, 15, 0x90, None, 0xdc, 0xdd, out);
    }

    fn map(&mut self, out: &mut Vec<u8>, n: usize) {
        self.len_form(n, 15, 0x80, None, 0xde, 0xdf, out);
    }

    fn node(&mut self, out: &mut Vec<u8>, n: &Node) {
        match n {
            Node::Nil => out.push(0xc0),
            Node::Bool(b) => out.push(0xc2 | *b as u8),
            Node::Int(v) => self.int(out, *v),
            Node::F32(bits) => {
                out.push(0xca);
                out.extend_from_slice(&bits.to_be_bytes());
            }
            Node::F64(bits) => {
                out.push(0xcb);
                out.extend_from_slice(&bits.to_be_bytes());
            }
            Node::Str(s) => self.str(out, s),
            Node::Bin(s) => self.bin(out, s),
            Node::Ext(t, d) => self.ext(out, *t, d),
            Node::Arr(xs) => {
                self.arr(out, xs.len());
                for x in xs {
                    self.node(out, x);
                }
            }
            Node::Map(kv) => {
                self.map(out, kv.len());
                for (k, v) in kv {
                    self.node(out, k);
                    self.node(out, v);
                }
            }
        }
    }
}

fn encode(n: &Node, r: &mut Rng, any: bool) -> Vec<u8> {
    let mut out = Vec::new();
    Enc { r, any }.node(&mut out, n);
    out
}

// ================================================================================================
// the harness: runs one input through the core and checks every property

const WORKER: u64 = 0xfedc_ba98_7654_3210;
const NOW: u64 = 1_700_000_000_123;

/// The index of a counter by name (the list grows over time; never hard-code positions).
fn ci(name: &str) -> usize {
    COUNTER_NAMES
        .iter()
        .position(|&n| n == name)
        .unwrap_or_else(|| panic!("no counter {name}"))
}

fn reject_counter(r: Reason) -> usize {
    ci(&format!("rejected_{}", r.name()))
}

struct Failure {
    count: u64,
    input: Vec<u8>,
    detail: String,
}

struct Harness {
    name: &'static str,
    started: Instant,
    inputs: u64,
    accepted: u64,
    payloads: u64,
    largest_alloc: usize,
    largest_alloc_len: usize,
    /// max of peak / budget over all inputs
    worst_budget: f64,
    worst_budget_len: usize,
    /// max of peak / len over inputs of at least 1 KiB (where the constant term no longer dominates)
    worst_ratio: f64,
    failures: BTreeMap<&'static str, Failure>,
    // a long-lived ingestor fed every input too (per-rank state, rank limit, ids across batches)
    st: Ingestor,
    st_next: HashMap<u32, u64>,
    st_seq: u64,
    // the same for the dynamo-1.4 profile: next id and next envelope sequence per rank
    st14: Ingestor,
    st14_next: HashMap<u32, (u64, u64)>,
}

fn new_stateful14() -> Ingestor {
    Ingestor::new(IngestorConfig {
        kv_block_size: 4,
        worker_id: WORKER,
        max_dp_ranks: 8,
        local_indexer: Some(64),
        wire: dynamo_kv_core::convert::Wire::Dynamo14,
        publisher_seed: 99,
        ..IngestorConfig::new(1, 0)
    })
    .unwrap()
}

fn new_stateful() -> Ingestor {
    Ingestor::new(IngestorConfig {
        kv_block_size: 4,
        worker_id: WORKER,
        mode: Mode::EventPlane,
        max_dp_ranks: 8,
        dp_ranks: None,
        local_indexer: Some(64),
        ..IngestorConfig::new(1, 0)
    })
    .unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The event-plane envelope `{publisher_id, sequence, published_at, topic, payload: bin}`.
struct Envelope {
    publisher_id: u64,
    sequence: u64,
    published_at: u64,
    topic: Vec<u8>,
    payload: Vec<u8>,
}

fn envelope(b: &[u8]) -> Result<Envelope, String> {
    let mut r = Reader::new(b);
    let Ok(Head::Map(5)) = r.head(1) else {
        return Err("envelope is not a map of 5".into());
    };
    let mut e = Envelope {
        publisher_id: 0,
        sequence: 0,
        published_at: 0,
        topic: vec![],
        payload: vec![],
    };
    for want in [
        "publisher_id",
        "sequence",
        "published_at",
        "topic",
        "payload",
    ] {
        let Ok(Head::Str(k)) = r.head(2) else {
            return Err("envelope key is not a string".into());
        };
        if k != want.as_bytes() {
            return Err(format!(
                "envelope key {:?} where {want} was expected",
                String::from_utf8_lossy(k)
            ));
        }
        match (want, r.head(2)) {
            ("publisher_id", Ok(Head::Uint(v))) => e.publisher_id = v,
            ("sequence", Ok(Head::Uint(v))) => e.sequence = v,
            ("published_at", Ok(Head::Uint(v))) => e.published_at = v,
            ("topic", Ok(Head::Str(s))) => e.topic = s.to_vec(),
            ("payload", Ok(Head::Bin(s))) => e.payload = s.to_vec(),
            (k, h) => return Err(format!("envelope {k} has the wrong type: {h:?}")),
        }
    }
    if !r.at_end() {
        return Err("bytes after the envelope".into());
    }
    Ok(e)
}

/// The router events an accepted batch must produce on a fresh single-rank ingestor.
fn expected_data(dec: &DecodedBatch) -> Vec<EventData> {
    let mut v = Vec::new();
    for c in &dec.events {
        match c {
            Converted::Stored(s) => {
                let mut parent = s.parent_hash;
                for chunk in s.blocks.chunks(1024) {
                    v.push(EventData::Stored {
                        parent_hash: parent,
                        blocks: chunk.to_vec(),
                    });
                    parent = chunk.last().map(|b| b.block_hash);
                }
            }
            Converted::Removed(h) => v.extend(h.chunks(4096).map(|c| EventData::Removed {
                block_hashes: c.to_vec(),
            })),
            Converted::Cleared => v.push(EventData::Cleared),
        }
    }
    v
}

fn decode_payload(mode: Mode, bytes: &[u8], sequence: u64) -> Result<RouterEvent, String> {
    match mode {
        Mode::JetStream => decode_router_event_json(bytes).map_err(|e| e.0),
        Mode::EventPlane => {
            let e = envelope(bytes)?;
            if e.publisher_id != WORKER
                || e.sequence != sequence
                || e.published_at != NOW
                || e.topic != b"kv-events"
            {
                return Err(format!(
                    "envelope header: publisher {} seq {} (want {sequence}) at {} topic {:?}",
                    e.publisher_id, e.sequence, e.published_at, e.topic
                ));
            }
            decode_router_event_msgpack(&e.payload).map_err(|e| e.0)
        }
    }
}

impl Harness {
    fn new(name: &'static str) -> Self {
        Harness {
            name,
            started: Instant::now(),
            inputs: 0,
            accepted: 0,
            payloads: 0,
            largest_alloc: 0,
            largest_alloc_len: 0,
            worst_budget: 0.0,
            worst_budget_len: 0,
            worst_ratio: 0.0,
            failures: BTreeMap::new(),
            st: new_stateful(),
            st_next: HashMap::new(),
            st_seq: 0,
            st14: new_stateful14(),
            st14_next: HashMap::new(),
        }
    }

    fn fail(&mut self, category: &'static str, input: &[u8], detail: String) {
        let f = self.failures.entry(category).or_insert(Failure {
            count: 0,
            input: input.to_vec(),
            detail: detail.clone(),
        });
        f.count += 1;
        if input.len() < f.input.len() {
            f.input = input.to_vec();
            f.detail = detail;
        }
    }

    /// Runs one input; returns whether the batch was accepted (not malformed).
    fn run(&mut self, input: &[u8], bs: u32) -> bool {
        self.inputs += 1;
        let len = input.len();
        let want = oracle(input);
        let mode = if self.inputs.is_multiple_of(2) {
            Mode::EventPlane
        } else {
            Mode::JetStream
        };
        let mut ing = Ingestor::new(IngestorConfig {
            kv_block_size: bs,
            worker_id: WORKER,
            mode,
            max_dp_ranks: 64,
            dp_ranks: None,
            local_indexer: Some(16),
            ..IngestorConfig::new(1, 0)
        })
        .unwrap();

        // ---- the measured window: only the core's own work on this input
        let res = catch_unwind(AssertUnwindSafe(|| {
            reset_peak();
            let peek = peek_batch(input).map(|(r, p)| (r, p.map(<[u8]>::len)));
            let dec = decode_engine_batch(input, bs);
            let out = ing.ingest(input, NOW);
            let pk_core = peak();
            reset_peak();
            let _ = decode_router_event_msgpack(input);
            let _ = decode_router_event_json(input);
            let _ = dynamo_kv_core::wire::decode_router_event_envelope(input);
            (peek, dec, out, pk_core, peak())
        }));
        let Ok((peek, dec, out, pk, pk_router)) = res else {
            self.fail(
                "panic",
                input,
                "the core panicked (message above in the captured output)".into(),
            );
            return false;
        };

        // ---- allocation
        if pk > self.largest_alloc {
            self.largest_alloc = pk;
            self.largest_alloc_len = len;
        }
        let frac = pk as f64 / alloc_budget(len) as f64;
        if frac > self.worst_budget {
            self.worst_budget = frac;
            self.worst_budget_len = len;
        }
        if len >= 1024 {
            self.worst_ratio = self.worst_ratio.max(pk as f64 / len as f64);
        }
        if pk > alloc_budget(len) {
            self.fail(
                "alloc_budget",
                input,
                format!(
                    "largest single allocation {pk} B for a {len}-byte input (budget {})",
                    alloc_budget(len)
                ),
            );
        }
        if pk_router > alloc_budget(len) {
            self.fail(
                "alloc_budget_router_decode",
                input,
                format!("decode_router_event_*: {pk_router} B for {len} B"),
            );
        }

        // ---- outcome shape and agreement
        let u = unpack(&out);
        let malformed = u.rejected[Reason::Malformed as usize];
        match u.dp_rank {
            None if malformed != 1 => self.fail(
                "outcome_no_rank_but_not_malformed",
                input,
                format!(
                    "dp_rank None with rejected {:?} (peek {:?})",
                    u.rejected,
                    peek.map(|p| p.0)
                ),
            ),
            None if !u.payloads.is_empty()
                || u.first_event_id.is_some()
                || u.rejected.iter().sum::<u32>() != 1 =>
            {
                self.fail("outcome_malformed_shape", input, format!("{u:?}"))
            }
            Some(_) if malformed != 0 => {
                self.fail("outcome_rank_and_malformed", input, format!("{u:?}"))
            }
            _ => {}
        }
        let ingest_ok = malformed == 0;
        if peek.is_ok() != dec.is_some() || dec.is_some() != ingest_ok {
            self.fail(
                "disagreement",
                input,
                format!(
                    "peek {:?} decode {} ingest {}",
                    peek.map(|p| p.0),
                    dec.is_some(),
                    ingest_ok
                ),
            );
        }
        match (&want, &peek) {
            (Ok(a), Ok((b, _))) if a != b => self.fail(
                "oracle_rank",
                input,
                format!("reference rank {a}, peek rank {b}"),
            ),
            (Ok(_), Err(_)) => self.fail(
                "oracle_says_valid",
                input,
                "the reference accepts the batch, peek_batch says malformed".into(),
            ),
            (Err(_), Ok(_)) => self.fail(
                "oracle_says_malformed",
                input,
                "the reference rejects the batch, peek_batch accepts it".into(),
            ),
            _ => {}
        }

        // ---- an accepted batch: exactly the payloads its decoded events imply
        if let (Some(dec), Ok((rank, _))) = (&dec, &peek) {
            self.accepted += 1;
            let rank = *rank;
            if dec.dp_rank != rank {
                self.fail(
                    "decode_rank",
                    input,
                    format!("decode {} peek {rank}", dec.dp_rank),
                );
            }
            if u.dp_rank != Some(rank) {
                self.fail(
                    "packed_dp_rank",
                    input,
                    format!("batch rank {rank}, packed output says {:?}", u.dp_rank),
                );
            }
            if u.rejected != dec.rejected {
                self.fail(
                    "rejections_differ",
                    input,
                    format!("ingest {:?} decode {:?}", u.rejected, dec.rejected),
                );
            }
            let expect = expected_data(dec);
            self.payloads += u.payloads.len() as u64;
            if expect.len() != u.payloads.len() {
                self.fail(
                    "payload_count",
                    input,
                    format!("{} payloads, {} expected", u.payloads.len(), expect.len()),
                );
            } else {
                if !expect.is_empty() && u.first_event_id != Some(0) {
                    self.fail("first_event_id", input, format!("{:?}", u.first_event_id));
                }
                for (i, (p, want)) in u.payloads.iter().zip(&expect).enumerate() {
                    match decode_payload(mode, p, i as u64) {
                        Err(e) => self.fail("payload_undecodable", input, e),
                        Ok(ev) => {
                            if ev.worker_id != WORKER
                                || ev.dp_rank != rank
                                || ev.event_id != i as u64
                                || ev.data != *want
                            {
                                self.fail("payload_content", input, format!("payload {i}: {ev:?}, expected {want:?} with id {i} rank {rank}"));
                            }
                        }
                    }
                }
            }
            // counters
            let c = ing.counters();
            let rejected_sum: u64 = dec.rejected.iter().map(|&x| x as u64).sum();
            let mut want_c = [0u64; COUNTER_NAMES.len()];
            want_c[ci("batches")] = 1;
            want_c[ci("events_in")] = dec.events.len() as u64 + rejected_sum;
            for e in &expect {
                match e {
                    EventData::Stored { blocks, .. } => {
                        want_c[ci("emitted_stored")] += 1;
                        want_c[ci("blocks_stored")] += blocks.len() as u64;
                    }
                    EventData::Removed { block_hashes } => {
                        want_c[ci("emitted_removed")] += 1;
                        want_c[ci("blocks_removed")] += block_hashes.len() as u64;
                    }
                    EventData::Cleared => want_c[ci("emitted_cleared")] += 1,
                }
            }
            for e in &dec.events {
                match e {
                    Converted::Stored(s) if s.truncated.is_some() => {
                        want_c[ci("truncated_stores")] += 1
                    }
                    Converted::Cleared => want_c[ci("resets")] += 1,
                    _ => {}
                }
            }
            want_c[ci("payload_bytes")] = u.payloads.iter().map(|p| p.len() as u64).sum();
            for r in Reason::ALL {
                want_c[reject_counter(r)] = dec.rejected[r as usize] as u64;
            }
            if *c != want_c {
                let diff: Vec<String> = (0..COUNTER_NAMES.len())
                    .filter(|&i| c[i] != want_c[i])
                    .map(|i| format!("{}={} (want {})", COUNTER_NAMES[i], c[i], want_c[i]))
                    .collect();
                self.fail("counters", input, diff.join(", "));
            }
        } else {
            let c = ing.counters();
            let nonzero: Vec<usize> = (0..COUNTER_NAMES.len()).filter(|&i| c[i] != 0).collect();
            if nonzero != [ci("batches"), reject_counter(Reason::Malformed)]
                || c[ci("batches")] != 1
                || c[reject_counter(Reason::Malformed)] != 1
            {
                self.fail("counters_malformed", input, format!("{c:?}"));
            }
        }

        // ---- the long-lived ingestor: ids per rank stay consecutive, rejections consume none
        self.run_stateful(input, peek.map(|p| p.0));
        self.run_stateful14(input, peek.map(|p| p.0));
        if self.inputs.is_multiple_of(20_000) {
            self.st = new_stateful();
            self.st_next.clear();
            self.st_seq = 0;
            self.st14 = new_stateful14();
            self.st14_next.clear();
        }
        ingest_ok
    }

    /// The dynamo-1.4 profile on the same input: never a panic; a malformed batch emits nothing;
    /// otherwise every payload is an envelope of the rank's publisher with the next sequence, holding
    /// an array of at most 128 events (8,192 blocks, or one larger event) of this worker and rank,
    /// with storage tiers, numbered on from the rank's last id without gaps.
    fn run_stateful14(
        &mut self,
        input: &[u8],
        peek: Result<u32, dynamo_kv_core::msgpack::Malformed>,
    ) {
        let Ok(out) = catch_unwind(AssertUnwindSafe(|| self.st14.ingest(input, NOW))) else {
            self.fail(
                "panic_stateful14",
                input,
                "the dynamo-1.4 ingestor panicked".into(),
            );
            self.st14 = new_stateful14();
            self.st14_next.clear();
            return;
        };
        let u = unpack(&out);
        let Ok(rank) = peek else {
            if u.rejected[0] != 1 || !u.payloads.is_empty() {
                self.fail("stateful14_malformed", input, format!("{u:?}"));
            }
            return;
        };
        if u.rejected[Reason::DpRank as usize] != 0 {
            if !u.payloads.is_empty() || self.st14_next.contains_key(&rank) {
                self.fail("stateful14_rank", input, format!("rank {rank}: {u:?}"));
            }
            return;
        }
        let (mut next_id, mut next_seq) = *self.st14_next.entry(rank).or_insert((1, 0));
        if !u.payloads.is_empty()
            && (u.first_event_id != Some(next_id) || u.first_sequence != Some(next_seq))
        {
            self.fail(
                "stateful14_first",
                input,
                format!("rank {rank}: {u:?}, expected id {next_id} seq {next_seq}"),
            );
        }
        for p in &u.payloads {
            let env = match envelope(p) {
                Ok(e) => e,
                Err(e) => {
                    self.fail("stateful14_envelope", input, e);
                    continue;
                }
            };
            if env.sequence != next_seq || env.publisher_id != self.st14.publisher_id(rank) {
                self.fail(
                    "stateful14_sequence",
                    input,
                    format!("{} {}", env.sequence, env.publisher_id),
                );
            }
            next_seq += 1;
            let evs = match dynamo_kv_core::wire::decode_router_events_encoded(p, 0) {
                Ok(evs) => evs,
                Err(e) => {
                    self.fail("stateful14_payload", input, e.0);
                    continue;
                }
            };
            let blocks: usize = evs
                .iter()
                .map(|(e, _)| match &e.data {
                    EventData::Stored { blocks, .. } => blocks.len(),
                    EventData::Removed { block_hashes } => block_hashes.len(),
                    EventData::Cleared => 0,
                })
                .sum();
            if evs.is_empty() || evs.len() > 128 || (evs.len() > 1 && blocks > 8192) {
                self.fail(
                    "stateful14_partition",
                    input,
                    format!("{} events, {blocks} blocks", evs.len()),
                );
            }
            for (e, meta) in &evs {
                if e.worker_id != WORKER
                    || e.dp_rank != rank
                    || e.event_id != next_id
                    || meta.storage_tier.is_none()
                    || meta.residency_domain.is_none()
                {
                    self.fail(
                        "stateful14_event",
                        input,
                        format!("{e:?} {meta:?}, expected id {next_id}"),
                    );
                }
                next_id += 1;
            }
        }
        self.st14_next.insert(rank, (next_id, next_seq));
        if self.st14.next_event_id(rank) != next_id {
            self.fail("stateful14_next_event_id", input, format!("rank {rank}"));
        }
    }

    fn run_stateful(
        &mut self,
        input: &[u8],
        peek: Result<u32, dynamo_kv_core::msgpack::Malformed>,
    ) {
        let packed = self.inputs.is_multiple_of(3);
        let Ok(out) = catch_unwind(AssertUnwindSafe(|| {
            if packed {
                self.st.ingest_packed(input, NOW).to_vec()
            } else {
                self.st.ingest(input, NOW)
            }
        })) else {
            self.fail(
                "panic_stateful",
                input,
                "the long-lived ingestor panicked".into(),
            );
            self.st = new_stateful();
            self.st_next.clear();
            self.st_seq = 0;
            return;
        };
        let u = unpack(&out);
        let Ok(rank) = peek else {
            if u.rejected[0] != 1 || !u.payloads.is_empty() {
                self.fail("stateful_malformed", input, format!("{u:?}"));
            }
            return;
        };
        let known = self.st_next.contains_key(&rank);
        if !known && self.st_next.len() >= 8 {
            // the rank limit: rejected whole, nothing emitted, no state for the rank
            if u.rejected[Reason::DpRank as usize] != 1
                || u.rejected.iter().sum::<u32>() != 1
                || !u.payloads.is_empty()
                || self.st.rank_allowed(rank)
            {
                self.fail("stateful_rank_limit", input, format!("rank {rank}: {u:?}"));
            }
            if self.st.next_event_id(rank) != 0 {
                self.fail("stateful_rank_limit", input, format!("rank {rank} got ids"));
            }
            return;
        }
        let first = *self.st_next.entry(rank).or_insert(0);
        if u.rejected[Reason::DpRank as usize] != 0 {
            self.fail(
                "stateful_rank_rejected",
                input,
                format!(
                    "rank {rank} rejected (known {known}, {} ranks seen)",
                    self.st_next.len()
                ),
            );
            return;
        }
        if !u.payloads.is_empty() && u.first_event_id != Some(first) {
            self.fail(
                "stateful_ids",
                input,
                format!(
                    "rank {rank}: first id {:?}, expected {first}",
                    u.first_event_id
                ),
            );
        }
        let next = first + u.payloads.len() as u64;
        self.st_next.insert(rank, next);
        if self.st.next_event_id(rank) != next {
            self.fail(
                "stateful_next_event_id",
                input,
                format!(
                    "rank {rank}: next_event_id {} expected {next}",
                    self.st.next_event_id(rank)
                ),
            );
        }
        for (i, p) in u.payloads.iter().enumerate() {
            let seq = self.st_seq;
            self.st_seq += 1;
            match decode_payload(Mode::EventPlane, p, seq) {
                Ok(ev) if ev.event_id == first + i as u64 && ev.dp_rank == rank => {}
                Ok(ev) => self.fail(
                    "stateful_payload",
                    input,
                    format!(
                        "payload {i}: id {} rank {}, expected {} rank {rank}",
                        ev.event_id,
                        ev.dp_rank,
                        first + i as u64
                    ),
                ),
                Err(e) => self.fail("stateful_payload", input, e),
            }
        }
    }

    fn finish(self) {
        let secs = self.started.elapsed().as_secs_f64();
        println!(
            "[{}] {} inputs ({} accepted, {} payloads checked) in {:.2} s; largest single allocation {} B (input of {} B); \
             worst peak/budget {:.4} (input of {} B); worst peak/len for inputs >= 1 KiB: {:.1}",
            self.name,
            self.inputs,
            self.accepted,
            self.payloads,
            secs,
            self.largest_alloc,
            self.largest_alloc_len,
            self.worst_budget,
            self.worst_budget_len,
            self.worst_ratio
        );
        if !self.failures.is_empty() {
            let mut msg = format!(
                "[{}] {} violation categories:\n",
                self.name,
                self.failures.len()
            );
            for (cat, f) in &self.failures {
                let shown = if f.input.len() > 600 {
                    format!("{}... ({} bytes)", hex(&f.input[..600]), f.input.len())
                } else {
                    hex(&f.input)
                };
                msg += &format!(
                    "  {cat}: {} inputs; smallest: {}\n    input: {shown}\n",
                    f.count, f.detail
                );
            }
            panic!("{msg}");
        }
    }
}

// ================================================================================================
// the fixtures

struct Fixture {
    name: String,
    bytes: Vec<u8>,
    bs: u32,
    malformed: bool,
}

fn fixtures() -> Vec<Fixture> {
    let path = format!(
        "{}/../../__test__/fixtures/engine-batches.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect(&path)).unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let h = c["hex"].as_str().unwrap();
            Fixture {
                name: c["name"].as_str().unwrap().to_string(),
                bytes: (0..h.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                    .collect(),
                bs: c["kv_block_size"].as_u64().unwrap() as u32,
                malformed: c["expect"].get("error").is_some(),
            }
        })
        .collect()
}

/// Markers worth writing over a byte: every family, the reserved 0xc1 and the 32-bit headers.
const INTERESTING: [u8; 12] = [
    0x00, 0x7f, 0x80, 0x90, 0xa0, 0xc0, 0xc1, 0xca, 0xcb, 0xdd, 0xdf, 0xff,
];

/// Length headers claiming about 4 billion elements or bytes, and some 16/8-bit ones.
const HUGE: [&[u8]; 16] = [
    &[0xdd, 0xff, 0xff, 0xff, 0xff],
    &[0xdf, 0xff, 0xff, 0xff, 0xff],
    &[0xdb, 0xff, 0xff, 0xff, 0xff],
    &[0xc6, 0xff, 0xff, 0xff, 0xff],
    &[0xc9, 0xff, 0xff, 0xff, 0xff, 0x01],
    &[0xdd, 0x7f, 0xff, 0xff, 0xff],
    &[0xdf, 0x80, 0x00, 0x00, 0x00],
    &[0xdb, 0xf0, 0x00, 0x00, 0x00],
    &[0xdc, 0xff, 0xff],
    &[0xde, 0xff, 0xff],
    &[0xda, 0xff, 0xff],
    &[0xc5, 0xff, 0xff],
    &[0xc8, 0xff, 0xff, 0x01],
    &[0xd9, 0xff],
    &[0xc4, 0xff],
    &[0xc7, 0xff, 0x01],
];

/// A 32-bit length header whose claim is `remaining + delta` for the bytes that follow it.
fn near_header(marker: u8, remaining: usize, delta: i64) -> Vec<u8> {
    let n = (remaining as i64 + delta).clamp(0, u32::MAX as i64) as u32;
    let mut h = vec![marker];
    h.extend_from_slice(&n.to_be_bytes());
    h
}

fn mutate(r: &mut Rng, b: &mut Vec<u8>, donors: &[Fixture]) {
    let pos = |r: &mut Rng, b: &Vec<u8>| r.upto(b.len() + 1);
    match r.below(12) {
        0 if !b.is_empty() => {
            let i = r.upto(b.len());
            b[i] ^= 1 << r.below(8);
        }
        1 if !b.is_empty() => {
            let i = r.upto(b.len());
            b[i] = if r.chance(50) {
                r.byte()
            } else {
                *r.pick(&INTERESTING)
            };
        }
        2 => {
            let i = pos(r, b);
            let n = r.range(1, 8) as usize;
            let ins = r.bytes(n);
            b.splice(i..i, ins);
        }
        3 if !b.is_empty() => {
            let i = r.upto(b.len());
            let n = (r.range(1, 16) as usize).min(b.len() - i);
            b.drain(i..i + n);
        }
        4 => {
            let n = r.upto(b.len() + 1);
            b.truncate(n);
        }
        5 if !b.is_empty() => {
            // duplicate a slice somewhere
            let i = r.upto(b.len());
            let n = (r.range(1, 32) as usize).min(b.len() - i);
            let s = b[i..i + n].to_vec();
            let at = pos(r, b);
            b.splice(at..at, s);
        }
        6 => {
            let i = pos(r, b);
            let h = r.pick(&HUGE).to_vec();
            if r.chance(50) {
                b.splice(i..i, h);
            } else {
                let end = (i + h.len()).min(b.len());
                b.splice(i..end, h);
            }
        }
        7 => {
            // a 32-bit header claiming just about what remains
            let i = pos(r, b);
            let m = *r.pick(&[0xddu8, 0xdf, 0xdb, 0xc6, 0xc9]);
            let h = near_header(m, b.len() - i, r.range(0, 4) as i64 - 2);
            b.splice(i..i, h);
        }
        8 if b.len() >= 2 => {
            let (i, j) = (r.upto(b.len()), r.upto(b.len()));
            b.swap(i, j);
        }
        9 => {
            // splice with another fixture
            let d = &r.pick(donors).bytes;
            let cut = r.upto(b.len() + 1);
            let from = r.upto(d.len() + 1);
            b.truncate(cut);
            b.extend_from_slice(&d[from..]);
        }
        10 => b.push(r.byte()),
        _ if !b.is_empty() => {
            // a run of one byte
            let i = r.upto(b.len());
            let n = (r.range(1, 12) as usize).min(b.len() - i);
            let v = *r.pick(&INTERESTING);
            b[i..i + n].fill(v);
        }
        _ => b.push(0xc0),
    }
}

// ================================================================================================
// the grammar: structured random msgpack, mostly batch-shaped

const TAGS: [&[u8]; 8] = [
    b"BlockStored",
    b"BlockRemoved",
    b"AllBlocksCleared",
    b"blockstored",
    b"",
    b"Foo",
    b"BlockStored\0",
    b"\xff\xfe",
];
const KEYS: [&[u8]; 25] = [
    b"type",
    b"block_hashes",
    b"parent_block_hash",
    b"token_ids",
    b"block_size",
    b"lora_id",
    b"medium",
    b"lora_name",
    b"extra_keys",
    b"block_mm_infos",
    b"group_idx",
    b"kv_cache_spec_kind",
    b"locality",
    b"mm_objects",
    b"mm_hash",
    b"offsets",
    b"events",
    b"ts",
    b"dp_rank",
    b"data_parallel_rank",
    b"__proto__",
    b"cache_salt",
    b"ownership",
    b"",
    b"\xc3\x28",
];
const WORDS: [&[u8]; 20] = [
    b"GPU",
    b"DEVICE",
    b"CPU_PINNED",
    b"NVME",
    b"dynamo-cache-salt:tenant",
    b"gpu",
    b"CPU",
    b"DISK",
    b"LOCAL",
    b"local",
    b"REMOTE",
    b"full_attention",
    b"mla_attention",
    b"sink_full_attention",
    b"sliding_window",
    b"mamba",
    b"x",
    b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    b"\xe2\x82",
    b"",
];
const INTS: [i128; 22] = [
    0,
    1,
    4,
    16,
    127,
    128,
    255,
    256,
    65535,
    65536,
    (1 << 31) - 1,
    1 << 31,
    u32::MAX as i128,
    u32::MAX as i128 + 1,
    i64::MAX as i128,
    u64::MAX as i128,
    -1,
    -32,
    -33,
    -128,
    -129,
    i64::MIN as i128,
];

struct Gen {
    r: Rng,
    any: bool,
    bs: u32,
}

impl Gen {
    fn enc(&mut self) -> Enc<'_> {
        Enc {
            r: &mut self.r,
            any: self.any,
        }
    }

    fn int(&mut self, out: &mut Vec<u8>, v: i128) {
        self.enc().int(out, v);
    }

    fn uint_small(&mut self, out: &mut Vec<u8>, v: u64) {
        self.enc().int(out, v as i128);
    }

    fn str(&mut self, out: &mut Vec<u8>, s: &[u8]) {
        self.enc().str(out, s);
    }

    fn arr(&mut self, out: &mut Vec<u8>, n: usize) {
        self.enc().arr(out, n);
    }

    fn map(&mut self, out: &mut Vec<u8>, n: usize) {
        self.enc().map(out, n);
    }

    /// 64 hex digits; a quarter of them Dynamo 1.5+ markers (16 digits, then 48 '0').
    fn hex64(&mut self) -> Vec<u8> {
        let marker = self.r.chance(25);
        (0..64)
            .map(|i| {
                if marker && i >= 16 {
                    b'0'
                } else {
                    *self.r.pick(b"0123456789abcdefABCDEF")
                }
            })
            .collect()
    }

    fn scalar(&mut self, out: &mut Vec<u8>) {
        match self.r.below(12) {
            0 => out.push(0xc0),
            1 => out.push(0xc2 | self.r.below(2) as u8),
            2 | 3 => {
                let v = *self.r.pick(&INTS);
                self.int(out, v)
            }
            4 => {
                let v = self.r.next() as i128;
                self.int(out, v)
            }
            5 => {
                let v = self.r.next() as i64 as i128;
                self.int(out, v)
            }
            6 => {
                if self.r.chance(50) {
                    out.push(0xca);
                    let bits = if self.r.chance(50) {
                        4.0f32.to_bits()
                    } else {
                        self.r.next() as u32
                    };
                    out.extend_from_slice(&bits.to_be_bytes());
                } else {
                    out.push(0xcb);
                    let bits = if self.r.chance(50) {
                        4.0f64.to_bits()
                    } else {
                        self.r.next()
                    };
                    out.extend_from_slice(&bits.to_be_bytes());
                }
            }
            7 => {
                let w = *self.r.pick(&WORDS);
                self.str(out, w)
            }
            8 => {
                let k = *self.r.pick(&KEYS);
                self.str(out, k)
            }
            9 => {
                let n = self.r.upto(40);
                let s = self.r.bytes(n);
                self.str(out, &s)
            }
            10 => {
                let n = if self.r.chance(30) {
                    16
                } else {
                    self.r.upto(20)
                };
                let s = self.r.bytes(n);
                self.enc().bin(out, &s)
            }
            _ => {
                let n = *self.r.pick(&[0usize, 1, 2, 3, 4, 8, 16, 17]);
                let d = self.r.bytes(n);
                let t = self.r.byte();
                self.enc().ext(out, t, &d)
            }
        }
    }

    /// A random value nested up to `depth` more levels.
    fn any(&mut self, out: &mut Vec<u8>, depth: u32) {
        if depth == 0 || self.r.chance(45) {
            return self.scalar(out);
        }
        let k = if self.r.chance(5) {
            self.r.upto(40)
        } else {
            self.r.upto(5)
        };
        if self.r.chance(55) {
            self.arr(out, k);
            for _ in 0..k {
                self.any(out, depth - 1);
            }
        } else {
            self.map(out, k);
            for _ in 0..k {
                if self.r.chance(70) {
                    let key = *self.r.pick(&KEYS);
                    self.str(out, key);
                } else {
                    self.any(out, depth.min(2) - 1);
                }
                self.any(out, depth - 1);
            }
        }
    }

    /// A value whose deepest part is exactly `depth` levels below it (a spine with small siblings).
    fn chain(&mut self, out: &mut Vec<u8>, depth: u32) {
        if depth == 0 {
            return self.scalar(out);
        }
        let k = 1 + self.r.upto(3);
        let spine = self.r.upto(k);
        let small = |g: &mut Gen, out: &mut Vec<u8>| {
            let d = (depth - 1).min(g.r.below(3) as u32);
            g.any(out, d)
        };
        if self.r.chance(60) {
            self.arr(out, k);
            for i in 0..k {
                if i == spine {
                    self.chain(out, depth - 1)
                } else {
                    small(self, out)
                }
            }
        } else {
            self.map(out, k);
            for i in 0..k {
                if i == spine && self.r.chance(20) {
                    // the spine goes through a key
                    self.chain(out, depth - 1);
                    small(self, out);
                } else {
                    let key = *self.r.pick(&KEYS);
                    self.str(out, key);
                    if i == spine {
                        self.chain(out, depth - 1)
                    } else {
                        small(self, out)
                    }
                }
            }
        }
    }

    /// Junk for a field: mostly shallow, sometimes a deep chain (up to ~80 levels).
    fn junk(&mut self, out: &mut Vec<u8>) {
        if self.r.chance(8) {
            let d = self.r.range(0, 80) as u32;
            self.chain(out, d)
        } else {
            let d = self.r.below(3) as u32;
            self.any(out, d)
        }
    }

    fn hash(&mut self, out: &mut Vec<u8>, prev: &[u64]) -> Option<u64> {
        match self.r.below(100) {
            0..=54 => {
                let v = self.r.next();
                self.int(out, v as i128);
                Some(v)
            }
            55..=64 => {
                let v = self.r.below(300);
                self.int(out, v as i128);
                Some(v)
            }
            65..=74 => {
                let v = -(self.r.range(1, i64::MAX as u64) as i128);
                self.int(out, v);
                Some(v as i64 as u64)
            }
            75..=84 => {
                let n = self.r.range(1, 12) as usize;
                let b = self.r.bytes(n);
                self.enc().bin(out, &b);
                Some(
                    b[n.saturating_sub(8)..]
                        .iter()
                        .fold(0, |a, &x| (a << 8) | x as u64),
                )
            }
            85..=89 if !prev.is_empty() => {
                let v = *self.r.pick(prev);
                self.int(out, v as i128);
                Some(v)
            }
            90..=92 => {
                self.enc().bin(out, &[]);
                None
            }
            _ => {
                self.scalar(out);
                None
            }
        }
    }

    fn hashes(&mut self, out: &mut Vec<u8>, n: usize) -> Vec<u64> {
        self.arr(out, n);
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            if let Some(h) = self.hash(out, &v) {
                v.push(h)
            }
        }
        v
    }

    fn clean_hashes(&mut self, out: &mut Vec<u8>, n: usize) -> Vec<u64> {
        self.arr(out, n);
        (0..n)
            .map(|_| {
                let v = self.r.next();
                self.int(out, v as i128);
                v
            })
            .collect()
    }

    fn tokens(&mut self, out: &mut Vec<u8>, n: usize, clean: bool) {
        self.arr(out, n);
        // Eagle bigram pairs [[a, b], [b, c], ...] (Dynamo 1.4+), now and then mixed with plain ids
        let pairs = self.r.chance(8);
        for _ in 0..n {
            if pairs && self.r.chance(98) {
                let (a, b) = (self.r.below(1 << 17) as i128, self.r.below(1 << 17) as i128);
                self.arr(out, 2);
                self.int(out, a);
                self.int(out, b);
                continue;
            }
            if clean || self.r.chance(97) {
                let v = match self.r.below(10) {
                    0..=5 => self.r.below(1 << 17) as i128,
                    6..=7 => self.r.below(128) as i128,
                    8 => u32::MAX as i128,
                    _ => self.r.below(1 << 32) as i128,
                };
                self.int(out, v)
            } else {
                let v = *self
                    .r
                    .pick(&[u32::MAX as i128 + 1, -1, -200, u64::MAX as i128]);
                if self.r.chance(70) {
                    self.int(out, v)
                } else {
                    self.scalar(out)
                }
            }
        }
    }

    fn block_count(&mut self) -> usize {
        match self.r.below(1000) {
            0..=19 => 0,
            20..=29 => self.r.range(1000, 1100) as usize,
            _ => self.r.range(1, 6) as usize,
        }
    }

    fn token_count(&mut self, blocks: usize, bs: usize) -> usize {
        match self.r.below(10) {
            0..=6 => blocks * bs,
            7 => (blocks * bs).saturating_sub(self.r.upto(2 * bs + 1)),
            8 => blocks * bs + self.r.upto(bs + 3),
            _ => self.r.upto(bs + 1),
        }
    }

    fn opt_word(&mut self, out: &mut Vec<u8>) {
        if self.r.chance(80) {
            let w = *self.r.pick(&WORDS);
            self.str(out, w)
        } else {
            self.junk(out)
        }
    }

    fn extra_keys(&mut self, out: &mut Vec<u8>, blocks: usize) {
        let n = if self.r.chance(80) {
            blocks
        } else {
            self.r.upto(blocks + 2)
        };
        self.arr(out, n);
        for _ in 0..n {
            match self.r.below(4) {
                0 => out.push(0xc0),
                1 | 2 => {
                    let k = self.r.upto(3);
                    self.arr(out, k);
                    for _ in 0..k {
                        match self.r.below(5) {
                            0 | 1 => {
                                let h = self.hex64();
                                self.str(out, &h)
                            }
                            2 => {
                                // (identifier, offset)
                                self.arr(out, 2);
                                let h = self.hex64();
                                self.str(out, &h);
                                let o = self.r.below(1000);
                                self.uint_small(out, o)
                            }
                            _ => self.junk(out),
                        }
                    }
                }
                _ => self.junk(out),
            }
        }
    }

    fn mm_infos(&mut self, out: &mut Vec<u8>, blocks: usize) {
        let n = if self.r.chance(80) {
            blocks
        } else {
            self.r.upto(blocks + 2)
        };
        self.arr(out, n);
        for _ in 0..n {
            match self.r.below(10) {
                0..=2 => out.push(0xc0),
                3..=8 => {
                    let extra = self.r.chance(10);
                    self.map(out, 1 + extra as usize);
                    if extra {
                        self.str(out, b"zz");
                        self.junk(out);
                    }
                    self.str(out, b"mm_objects");
                    let k = self.r.upto(3);
                    self.arr(out, k);
                    for _ in 0..k {
                        let has_off = self.r.chance(70);
                        self.map(out, 1 + has_off as usize);
                        self.str(out, b"mm_hash");
                        if self.r.chance(95) {
                            let h = self.r.next();
                            self.int(out, h as i128)
                        } else {
                            self.junk(out)
                        }
                        if has_off {
                            self.str(out, b"offsets");
                            match self.r.below(10) {
                                0 => out.push(0xc0),
                                1 => self.junk(out),
                                _ => {
                                    let p = self.r.upto(3);
                                    self.arr(out, p);
                                    for _ in 0..p {
                                        if self.r.chance(95) {
                                            self.arr(out, 2);
                                            let (a, b) = (self.r.below(5000), self.r.below(5000));
                                            self.uint_small(out, a);
                                            self.uint_small(out, b);
                                        } else {
                                            self.junk(out)
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                _ => self.junk(out),
            }
        }
    }

    /// A BlockStored as a tagged map (vLLM map era) or a tagged array (older vLLM, SGLang).
    fn store(&mut self, out: &mut Vec<u8>) {
        let bs = if self.r.chance(90) {
            self.bs as usize
        } else {
            self.r.range(1, 20) as usize
        };
        let blocks = self.block_count();
        let big = blocks >= 1000;
        let tokens = if big {
            blocks * bs - self.r.upto(2) * bs
        } else {
            self.token_count(blocks, bs)
        };
        if self.r.chance(65) {
            // map form: fields in random order, some missing, some repeated, unknown keys mixed in
            let mut fields: Vec<u8> = vec![0, 1, 2, 3, 4];
            for (f, pct) in [
                (5u8, 40u64),
                (6, 50),
                (7, 40),
                (8, 15),
                (9, 15),
                (10, 20),
                (11, 15),
                (12, 10),
                (13, 10),
                (14, 5),
            ] {
                if self.r.chance(pct) {
                    fields.push(f)
                }
            }
            if !big {
                if self.r.chance(10) {
                    let i = self.r.upto(fields.len());
                    fields.remove(i);
                }
                if self.r.chance(5) {
                    let f = *self.r.pick(&fields);
                    fields.push(f)
                }
            }
            for i in (1..fields.len()).rev() {
                let j = self.r.upto(i + 1);
                fields.swap(i, j);
            }
            self.map(out, fields.len());
            let mut hashes = Vec::new();
            for f in fields {
                match f {
                    0 => {
                        self.str(out, b"type");
                        if self.r.chance(97) {
                            self.str(out, b"BlockStored")
                        } else {
                            self.junk(out)
                        }
                    }
                    1 => {
                        self.str(out, b"block_hashes");
                        hashes = if big {
                            self.clean_hashes(out, blocks)
                        } else {
                            self.hashes(out, blocks)
                        };
                    }
                    2 => {
                        self.str(out, b"parent_block_hash");
                        match self.r.below(10) {
                            0..=3 => out.push(0xc0),
                            4..=7 => {
                                let v = self.r.next();
                                self.int(out, v as i128)
                            }
                            8 if !hashes.is_empty() => {
                                let v = *self.r.pick(&hashes);
                                self.int(out, v as i128)
                            }
                            _ => self.junk(out),
                        }
                    }
                    3 => {
                        self.str(out, b"token_ids");
                        self.tokens(out, tokens, big)
                    }
                    4 => {
                        self.str(out, b"block_size");
                        match self.r.below(20) {
                            0 => self.junk(out),
                            1 => {
                                let v = *self.r.pick(&INTS);
                                self.int(out, v)
                            }
                            _ => self.uint_small(out, bs as u64),
                        }
                    }
                    5 => {
                        self.str(out, b"lora_id");
                        self.junk(out)
                    }
                    6 => {
                        self.str(out, b"medium");
                        self.opt_word(out)
                    }
                    7 => {
                        self.str(out, b"lora_name");
                        self.opt_word(out)
                    }
                    8 => {
                        self.str(out, b"extra_keys");
                        self.extra_keys(out, blocks.min(8))
                    }
                    9 => {
                        self.str(out, b"block_mm_infos");
                        if self.r.chance(90) {
                            self.mm_infos(out, blocks.min(8))
                        } else {
                            self.junk(out)
                        }
                    }
                    10 => {
                        self.str(out, b"group_idx");
                        if self.r.chance(70) {
                            let g = self.r.below(4);
                            self.uint_small(out, g)
                        } else {
                            self.junk(out)
                        }
                    }
                    11 => {
                        self.str(out, b"kv_cache_spec_kind");
                        self.opt_word(out)
                    }
                    12 => {
                        self.str(out, b"locality");
                        self.opt_word(out)
                    }
                    13 => {
                        let k = *self.r.pick(&KEYS);
                        self.str(out, k);
                        self.junk(out)
                    }
                    _ => {
                        // a non-string key
                        self.junk(out);
                        self.junk(out)
                    }
                }
            }
        } else {
            // array form: [tag, hashes, parent, tokens, block_size, lora_id, medium, lora_name,
            // extra_keys, mm_infos | group_idx, kind, ...]
            let n = if big {
                5
            } else {
                *self
                    .r
                    .pick(&[1usize, 2, 4, 5, 6, 6, 7, 8, 9, 10, 11, 11, 12, 13])
            };
            self.arr(out, n);
            self.str(out, b"BlockStored");
            let mut hashes = Vec::new();
            for i in 1..n {
                match i {
                    1 => {
                        hashes = if big {
                            self.clean_hashes(out, blocks)
                        } else {
                            self.hashes(out, blocks)
                        }
                    }
                    2 => {
                        if self.r.chance(50) {
                            out.push(0xc0)
                        } else if !hashes.is_empty() && self.r.chance(10) {
                            let v = *self.r.pick(&hashes);
                            self.int(out, v as i128)
                        } else {
                            let _ = self.hash(out, &[]);
                        }
                    }
                    3 => self.tokens(out, tokens, big),
                    4 => {
                        if self.r.chance(92) {
                            self.uint_small(out, bs as u64)
                        } else {
                            self.scalar(out)
                        }
                    }
                    6 | 7 => {
                        if self.r.chance(50) {
                            out.push(0xc0)
                        } else {
                            self.opt_word(out)
                        }
                    }
                    8 => {
                        if self.r.chance(50) {
                            out.push(0xc0)
                        } else {
                            self.extra_keys(out, blocks.min(8))
                        }
                    }
                    9 => match self.r.below(4) {
                        0 => self.mm_infos(out, blocks.min(8)),
                        1 => out.push(0xc0),
                        2 => {
                            let g = self.r.below(3);
                            self.uint_small(out, g)
                        }
                        _ => self.junk(out),
                    },
                    10 => self.opt_word(out),
                    _ => self.junk(out),
                }
            }
        }
    }

    fn remove(&mut self, out: &mut Vec<u8>) {
        let n = match self.r.below(1000) {
            0..=29 => 0,
            30..=39 => self.r.range(4000, 9000) as usize,
            _ => self.r.range(1, 8) as usize,
        };
        if self.r.chance(50) {
            let extra = [
                b"medium".as_slice(),
                b"group_idx",
                b"kv_cache_spec_kind",
                b"locality",
                b"zz",
            ];
            let k = self.r.upto(3);
            self.map(out, 2 + k);
            self.str(out, b"type");
            self.str(out, b"BlockRemoved");
            self.str(out, b"block_hashes");
            if n >= 4000 {
                self.clean_hashes(out, n);
            } else {
                self.hashes(out, n);
            }
            for _ in 0..k {
                let key = *self.r.pick(&extra);
                self.str(out, key);
                self.opt_word(out)
            }
        } else {
            let k = self.r.upto(4);
            self.arr(out, 1 + k);
            self.str(out, b"BlockRemoved");
            for i in 0..k {
                match i {
                    0 if n >= 4000 => drop(self.clean_hashes(out, n)),
                    0 => drop(self.hashes(out, n)),
                    1 => self.opt_word(out),
                    2 => {
                        let g = self.r.below(3);
                        self.uint_small(out, g)
                    }
                    _ => self.junk(out),
                }
            }
        }
    }

    fn event(&mut self, out: &mut Vec<u8>) {
        match self.r.below(100) {
            0..=59 => self.store(out),
            60..=74 => self.remove(out),
            75..=81 => {
                if self.r.chance(50) {
                    self.map(out, 1);
                    self.str(out, b"type");
                    self.str(out, b"AllBlocksCleared")
                } else {
                    let k = self.r.upto(3);
                    self.arr(out, 1 + k);
                    self.str(out, b"AllBlocksCleared");
                    for _ in 0..k {
                        self.junk(out)
                    }
                }
            }
            82..=87 => {
                // another tag, or a tag of the wrong type
                let k = self.r.upto(3);
                let map = self.r.chance(50);
                if map {
                    self.map(out, 1 + k);
                    self.str(out, b"type");
                } else {
                    self.arr(out, 1 + k);
                }
                if self.r.chance(70) {
                    let t = *self.r.pick(&TAGS);
                    self.str(out, t)
                } else {
                    self.junk(out)
                }
                for _ in 0..k {
                    if map {
                        let key = *self.r.pick(&KEYS);
                        self.str(out, key);
                    }
                    self.junk(out)
                }
            }
            _ => self.junk(out),
        }
    }

    fn rank(&mut self, out: &mut Vec<u8>) {
        match self.r.below(100) {
            0..=59 => {
                let v = self.r.below(4);
                self.uint_small(out, v)
            }
            60..=64 => out.push(0xc0),
            65..=69 => self.uint_small(out, u32::MAX as u64),
            70..=76 => {
                let v = self.r.range(1 << 31, u32::MAX as u64);
                self.uint_small(out, v)
            }
            77..=81 => {
                let v = self.r.range(4, 1 << 31);
                self.uint_small(out, v)
            }
            82..=86 => {
                let v = *self.r.pick(&[
                    u32::MAX as i128 + 1,
                    u64::MAX as i128,
                    -1,
                    -129,
                    i64::MIN as i128,
                ]);
                self.int(out, v)
            }
            _ => self.junk(out),
        }
    }

    fn events(&mut self, out: &mut Vec<u8>) {
        match self.r.below(100) {
            0..=1 => {
                // a wide list of tiny events (each a byte or two)
                let n = self.r.range(100, 3000) as usize;
                self.arr(out, n);
                for _ in 0..n {
                    let b = *self.r.pick(&[0xc0u8, 0x00, 0x90, 0x80, 0xc3, 0x7f]);
                    out.push(b);
                }
            }
            2..=6 => self.junk(out),
            _ => {
                let n = if self.r.chance(10) {
                    self.r.range(6, 20) as usize
                } else {
                    self.r.upto(6)
                };
                self.arr(out, n);
                for _ in 0..n {
                    self.event(out)
                }
            }
        }
    }

    fn ts(&mut self, out: &mut Vec<u8>) {
        if self.r.chance(80) {
            out.push(0xcb);
            let t = 1.7e9f64 + self.r.below(1_000_000) as f64 / 1000.0;
            out.extend_from_slice(&t.to_bits().to_be_bytes());
        } else {
            self.junk(out)
        }
    }

    /// A whole batch: positional (usually), a map, or anything.
    fn batch(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        match self.r.below(100) {
            0..=79 => {
                let n = match self.r.below(20) {
                    0 => self.r.upto(2),
                    1..=2 => 2,
                    3..=16 => 3,
                    _ => self.r.range(4, 6) as usize,
                };
                self.arr(&mut out, n);
                for i in 0..n {
                    match i {
                        0 => self.ts(&mut out),
                        1 => self.events(&mut out),
                        2 => self.rank(&mut out),
                        3 if self.r.chance(60) => {
                            let id = self.r.bytes(16);
                            self.enc().bin(&mut out, &id)
                        }
                        _ => self.junk(&mut out),
                    }
                }
            }
            80..=94 => {
                let mut keys: Vec<u8> = vec![0, 1];
                for (k, pct) in [(2u8, 50u64), (3, 40), (4, 10), (5, 10), (1, 5), (2, 5)] {
                    if self.r.chance(pct) {
                        keys.push(k)
                    }
                }
                if self.r.chance(5) {
                    keys.remove(1);
                }
                for i in (1..keys.len()).rev() {
                    let j = self.r.upto(i + 1);
                    keys.swap(i, j);
                }
                self.map(&mut out, keys.len());
                for k in keys {
                    match k {
                        0 => {
                            self.str(&mut out, b"ts");
                            self.ts(&mut out)
                        }
                        1 => {
                            self.str(&mut out, b"events");
                            self.events(&mut out)
                        }
                        2 => {
                            self.str(&mut out, b"data_parallel_rank");
                            self.rank(&mut out)
                        }
                        3 => {
                            self.str(&mut out, b"dp_rank");
                            self.rank(&mut out)
                        }
                        4 => {
                            let key = *self.r.pick(&KEYS);
                            self.str(&mut out, key);
                            self.junk(&mut out)
                        }
                        _ => {
                            self.junk(&mut out);
                            self.junk(&mut out)
                        }
                    }
                }
            }
            _ => self.junk(&mut out),
        }
        out
    }
}

fn gen(stream: u64) -> Gen {
    Gen {
        r: seeded(stream),
        any: false,
        bs: 4,
    }
}

/// Re-rolls the per-input knobs of a generator.
fn reroll(g: &mut Gen) {
    g.any = g.r.chance(25);
    g.bs = *g.r.pick(&[1u32, 2, 4, 4, 4, 4, 16]);
}

/// Picks a random node of a tree (by walking down) and changes it.
fn mutate_tree(g: &mut Gen, n: &mut Node) {
    let descend = match n {
        Node::Arr(xs) => !xs.is_empty() && g.r.chance(75),
        Node::Map(kv) => !kv.is_empty() && g.r.chance(75),
        _ => false,
    };
    if descend {
        match n {
            Node::Arr(xs) => {
                let i = g.r.upto(xs.len());
                return mutate_tree(g, &mut xs[i]);
            }
            Node::Map(kv) => {
                let i = g.r.upto(kv.len());
                let key = g.r.chance(15);
                let (k, v) = &mut kv[i];
                return mutate_tree(g, if key { k } else { v });
            }
            _ => unreachable!(),
        }
    }
    let replace = |g: &mut Gen, n: &mut Node| {
        let mut b = Vec::new();
        g.junk(&mut b);
        *n = parse_all(&b).unwrap_or(Node::Nil);
    };
    match n {
        Node::Int(v) => match g.r.below(6) {
            0 => *v = (*v + 1).min(u64::MAX as i128),
            1 => *v = (*v - 1).max(i64::MIN as i128),
            2 => *v = *g.r.pick(&INTS),
            3 => *n = Node::F64((*v as f64).to_bits()),
            4 => *n = Node::F32((*v as f32).to_bits()),
            _ => replace(g, n),
        },
        Node::Str(s) => match g.r.below(5) {
            0 => *s = g.r.pick(&WORDS).to_vec(),
            1 => *s = g.r.pick(&TAGS).to_vec(),
            2 => *n = Node::Bin(s.clone()),
            3 if !s.is_empty() => {
                let i = g.r.upto(s.len());
                s[i] = g.r.byte();
            }
            _ => replace(g, n),
        },
        Node::Arr(xs) => match g.r.below(6) {
            0 if !xs.is_empty() => {
                let i = g.r.upto(xs.len());
                xs.remove(i);
            }
            1 if !xs.is_empty() => {
                let i = g.r.upto(xs.len());
                let x = xs[i].clone();
                xs.insert(i, x);
            }
            2 => {
                let i = g.r.upto(xs.len() + 1);
                let mut b = Vec::new();
                g.junk(&mut b);
                xs.insert(i, parse_all(&b).unwrap_or(Node::Nil));
            }
            3 => xs.reverse(),
            4 => {
                let inner = std::mem::replace(n, Node::Nil);
                *n = Node::Arr(vec![inner]);
            }
            _ => replace(g, n),
        },
        Node::Map(kv) => match g.r.below(5) {
            0 if !kv.is_empty() => {
                let i = g.r.upto(kv.len());
                kv.remove(i);
            }
            1 if !kv.is_empty() => {
                let i = g.r.upto(kv.len());
                let x = kv[i].clone();
                kv.push(x);
            }
            2 => {
                let k = g.r.pick(&KEYS).to_vec();
                let mut b = Vec::new();
                g.junk(&mut b);
                kv.push((Node::Str(k), parse_all(&b).unwrap_or(Node::Nil)));
            }
            3 => {
                let m = std::mem::replace(n, Node::Nil);
                let Node::Map(kv) = m else { unreachable!() };
                *n = Node::Arr(kv.into_iter().flat_map(|(k, v)| [k, v]).collect());
            }
            _ => replace(g, n),
        },
        _ => replace(g, n),
    }
}

// ================================================================================================
// the tests (run in parallel; together more than 1,000,000 inputs)

/// (a) every fixture truncated at every length, every byte deleted, every byte overwritten with each
/// interesting marker, every bit flipped, and a huge or near-exact length header inserted everywhere.
#[test]
fn fixtures_truncated_and_point_mutated() {
    let fx = fixtures();
    let mut h = Harness::new("fixtures_point");
    let mut seen_ok = 0;
    for f in &fx {
        let b = &f.bytes;
        // the unmutated fixture agrees with its expectation
        assert_eq!(h.run(b, f.bs), !f.malformed, "{}", f.name);
        seen_ok += 1;
        for n in 0..b.len() {
            h.run(&b[..n], f.bs);
            let mut d = b.clone();
            d.remove(n);
            h.run(&d, f.bs);
            for v in INTERESTING {
                if b[n] != v {
                    let mut m = b.clone();
                    m[n] = v;
                    h.run(&m, f.bs);
                }
            }
            for bit in [0u8, 3, 5, 7] {
                let mut m = b.clone();
                m[n] ^= 1 << bit;
                h.run(&m, f.bs);
            }
        }
        for at in 0..=b.len() {
            for hdr in [HUGE[0], HUGE[1], HUGE[2], HUGE[3]] {
                let mut m = b.clone();
                m.splice(at..at, hdr.iter().copied());
                h.run(&m, f.bs);
            }
            for (marker, delta) in [(0xddu8, 0i64), (0xdf, 0), (0xdb, 0), (0xdb, 1)] {
                let mut m = b.clone();
                m.splice(at..at, near_header(marker, b.len() - at, delta));
                h.run(&m, f.bs);
            }
        }
        // trailing bytes
        for extra in [0x00u8, 0xc0, 0xc1, 0x90] {
            let mut m = b.clone();
            m.push(extra);
            h.run(&m, f.bs);
        }
    }
    assert_eq!(seen_ok, fx.len());
    h.finish();
}

/// (a) stacked random mutations of the fixtures: flips, overwrites, insertions, deletions,
/// truncation, duplicated slices, huge and near-exact length headers, cross-fixture splices.
#[test]
fn fixtures_randomly_mutated() {
    let fx = fixtures();
    let mut r = seeded(1);
    let mut h = Harness::new("fixtures_random");
    for _ in 0..scale(200_000) {
        let f = r.pick(&fx);
        let mut b = f.bytes.clone();
        for _ in 0..r.range(1, 4) {
            mutate(&mut r, &mut b, &fx);
        }
        h.run(&b, f.bs);
    }
    h.finish();
}

/// (a) structure-aware mutations of the fixtures: a node of the decoded tree is changed (values,
/// widths, types, elements, keys) and the tree is re-encoded, often with non-minimal headers.
#[test]
fn fixtures_tree_mutated() {
    let fx: Vec<(Node, u32)> = fixtures()
        .into_iter()
        .filter_map(|f| parse_all(&f.bytes).ok().map(|n| (n, f.bs)))
        .collect();
    assert!(fx.len() >= 60);
    let mut g = gen(2);
    let mut h = Harness::new("fixtures_tree");
    for _ in 0..scale(120_000) {
        reroll(&mut g);
        let (tree, bs) = g.r.pick(&fx).clone();
        let mut tree = tree;
        for _ in 0..g.r.range(1, 3) {
            mutate_tree(&mut g, &mut tree);
        }
        let any = g.any;
        let b = encode(&tree, &mut g.r, any);
        h.run(&b, bs);
    }
    h.finish();
}

/// (b) purely random bytes of random lengths 0..512, uniform and biased towards msgpack markers and
/// small lengths, and random tails after a valid batch prefix.
#[test]
fn random_bytes() {
    let mut r = seeded(3);
    let mut h = Harness::new("random_bytes");
    let n = scale(200_000);
    for i in 0..n {
        let len = r.upto(512);
        let b: Vec<u8> = match i % 4 {
            0 | 1 => r.bytes(len),
            2 => (0..len)
                .map(|_| match r.below(10) {
                    0..=3 => r.below(0x10) as u8,
                    4..=6 => *r.pick(&[
                        0x90u8, 0x91, 0x92, 0x93, 0x81, 0x82, 0xa1, 0xa5, 0xc0, 0xc4, 0xcc, 0xcd,
                        0xce, 0xcf, 0xd0, 0xd4, 0xdc, 0xde, 0xff,
                    ]),
                    7 => *r.pick(&INTERESTING),
                    _ => r.byte(),
                })
                .collect(),
            _ => {
                let mut b = vec![0x93, 0xcb];
                b.extend_from_slice(&1.7e9f64.to_bits().to_be_bytes());
                b.extend(r.bytes(len));
                b
            }
        };
        h.run(&b, 4);
    }
    h.finish();
}

/// (c) grammar-generated batches: positional and map batches with random stores, removes, clears,
/// unknown and broken events, random ranks, non-minimal encodings and deep junk in any field.
#[test]
fn grammar_batches() {
    let mut g = gen(4);
    let mut h = Harness::new("grammar_batches");
    for _ in 0..scale(230_000) {
        reroll(&mut g);
        let b = g.batch();
        let bs = g.bs;
        h.run(&b, bs);
    }
    h.finish();
}

/// (c) grammar-generated values of any shape, nested up to about 80 levels.
#[test]
fn grammar_values() {
    let mut g = gen(5);
    let mut h = Harness::new("grammar_values");
    for i in 0..scale(100_000) {
        reroll(&mut g);
        let mut b = Vec::new();
        if i % 2 == 0 {
            let d = g.r.range(0, 80) as u32;
            g.chain(&mut b, d);
        } else {
            // a batch whose ts or events hide a deep value
            b.push(0x93);
            let d = g.r.range(50, 80) as u32;
            if g.r.chance(50) {
                g.chain(&mut b, d);
                g.events(&mut b);
            } else {
                g.ts(&mut b);
                g.arr(&mut b, 1);
                g.chain(&mut b, d);
            }
            g.rank(&mut b);
        }
        let bs = g.bs;
        h.run(&b, bs);
    }
    h.finish();
}

// ------------------------------------------------------------------------------------------------
// (d) nesting exactly at and just over the limit

/// How a chain of wrappers nests: each wrapper adds one level.
#[derive(Clone, Copy, Debug)]
enum Wrap {
    Array,
    MapValue,
    MapKey,
    Alternate,
    Random(u64),
}

/// `levels` wrappers around `leaf`: the leaf sits `levels` levels below the first wrapper.
fn wrapped(levels: u32, leaf: &[u8], style: Wrap) -> Vec<u8> {
    let mut r = seeded(match style {
        Wrap::Random(s) => s,
        _ => 0,
    });
    let mut pre = Vec::new();
    let mut post: Vec<Vec<u8>> = Vec::new();
    for i in 0..levels {
        let kind = match style {
            Wrap::Array => 0,
            Wrap::MapValue => 1,
            Wrap::MapKey => 2,
            Wrap::Alternate => i % 3,
            Wrap::Random(_) => r.below(4) as u32,
        };
        match kind {
            0 => {
                pre.push(0x91);
                post.push(vec![]);
            }
            1 => {
                pre.extend_from_slice(&[0x81, 0xa1, b'k']);
                post.push(vec![]);
            }
            2 => {
                pre.push(0x81);
                post.push(vec![0xc0]);
            }
            _ => {
                // an array with the spine second, after a sibling
                pre.extend_from_slice(&[0x92, 0x01]);
                post.push(vec![]);
            }
        }
    }
    pre.extend_from_slice(leaf);
    for p in post.into_iter().rev() {
        pre.extend(p);
    }
    pre
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    Nothing,
    Stores,
    Removes,
    Clears,
    Rejects(Reason),
}

fn store_map(extra: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut b = Vec::new();
    let mut w = Writer::new(&mut b);
    w.map(5 + extra.len());
    w.str("type");
    w.str("BlockStored");
    w.str("block_hashes");
    w.array(2);
    w.uint(11);
    w.uint(22);
    w.str("parent_block_hash");
    w.nil();
    w.str("token_ids");
    w.array(8);
    for t in 1..=8 {
        w.uint(t);
    }
    w.str("block_size");
    w.uint(4);
    for (k, v) in extra {
        b.extend_from_slice(k);
        b.extend_from_slice(v);
    }
    b
}

fn raw_str(s: &str) -> Vec<u8> {
    let mut b = Vec::new();
    Writer::new(&mut b).str(s);
    b
}

fn in_batch(events: &[&[u8]]) -> Vec<u8> {
    let mut b = vec![0x93, 0x00, 0x90 | events.len() as u8];
    for e in events {
        b.extend_from_slice(e);
    }
    b.push(0x00);
    b
}

/// (name, level of the hole, batch around the hole, outcome when the batch is accepted)
type Site = (&'static str, u32, Box<dyn Fn(&[u8]) -> Vec<u8>>, Expect);

fn sites() -> Vec<Site> {
    let k = |s: &str| raw_str(s);
    let hex64 = raw_str("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
    vec![
        (
            "ts",
            2,
            Box::new(|h: &[u8]| [&[0x93][..], h, &[0x90, 0x00]].concat()),
            Expect::Nothing,
        ),
        (
            "event",
            3,
            Box::new(|h: &[u8]| in_batch(&[h])),
            Expect::Rejects(Reason::Invalid),
        ),
        (
            "4th batch element",
            2,
            Box::new(|h: &[u8]| [&[0x94, 0x00, 0x90, 0x00][..], h].concat()),
            Expect::Nothing,
        ),
        (
            "5th batch element",
            2,
            Box::new(|h: &[u8]| [&[0x95, 0x00, 0x90, 0x00, 0xc0][..], h].concat()),
            Expect::Nothing,
        ),
        (
            "map batch unknown key",
            2,
            Box::new(move |h: &[u8]| [&[0x82][..], &k("events"), &[0x90], &k("x"), h].concat()),
            Expect::Nothing,
        ),
        (
            "map batch non-string key",
            2,
            Box::new(move |h: &[u8]| [&[0x82][..], h, &[0x00], &k("events"), &[0x90]].concat()),
            Expect::Nothing,
        ),
        (
            "map batch events element",
            3,
            Box::new(move |h: &[u8]| [&[0x81][..], &k("events"), &[0x91], h].concat()),
            Expect::Rejects(Reason::Invalid),
        ),
        (
            "store unknown key",
            4,
            Box::new(move |h: &[u8]| in_batch(&[&store_map(&[(&k("zz"), h)])])),
            Expect::Stores,
        ),
        (
            "store non-string key",
            4,
            Box::new(|h: &[u8]| in_batch(&[&store_map(&[(h, &[0xc0])])])),
            Expect::Stores,
        ),
        (
            "store lora_name",
            4,
            Box::new(move |h: &[u8]| in_batch(&[&store_map(&[(&k("lora_name"), h)])])),
            Expect::Stores,
        ),
        (
            "store medium",
            4,
            Box::new(move |h: &[u8]| in_batch(&[&store_map(&[(&k("medium"), h)])])),
            Expect::Stores,
        ),
        (
            "store group_idx",
            4,
            Box::new(move |h: &[u8]| in_batch(&[&store_map(&[(&k("group_idx"), h)])])),
            Expect::Stores,
        ),
        (
            "store extra_keys block",
            5,
            Box::new(move |h: &[u8]| {
                in_batch(&[&store_map(&[(
                    &k("extra_keys"),
                    &[&[0x91][..], h].concat(),
                )])])
            }),
            Expect::Stores,
        ),
        (
            "store extra_keys key",
            6,
            Box::new(move |h: &[u8]| {
                in_batch(&[&store_map(&[(
                    &k("extra_keys"),
                    &[&[0x91, 0x91][..], h].concat(),
                )])])
            }),
            Expect::Stores,
        ),
        (
            "store extra_keys tuple tail",
            7,
            Box::new(move |h: &[u8]| {
                in_batch(&[&store_map(&[(
                    &k("extra_keys"),
                    &[&[0x91, 0x91, 0x92][..], &hex64, h].concat(),
                )])])
            }),
            Expect::Stores,
        ),
        (
            "mm entry unknown key",
            6,
            Box::new(move |h: &[u8]| {
                in_batch(&[&store_map(&[(
                    &k("block_mm_infos"),
                    &[&[0x91, 0x82][..], &k("mm_objects"), &[0x90], &k("zz"), h].concat(),
                )])])
            }),
            Expect::Stores,
        ),
        (
            "mm object unknown key",
            8,
            Box::new(move |h: &[u8]| {
                in_batch(&[&store_map(&[(
                    &k("block_mm_infos"),
                    &[
                        &[0x91, 0x81][..],
                        &k("mm_objects"),
                        &[0x91, 0x82],
                        &k("mm_hash"),
                        &[0x01],
                        &k("zz"),
                        h,
                    ]
                    .concat(),
                )])])
            }),
            Expect::Stores,
        ),
        (
            "mm offsets pair element",
            10,
            Box::new(move |h: &[u8]| {
                in_batch(&[&store_map(&[(
                    &k("block_mm_infos"),
                    &[
                        &[0x91, 0x81][..],
                        &k("mm_objects"),
                        &[0x91, 0x82],
                        &k("mm_hash"),
                        &[0x01],
                        &k("offsets"),
                        &[0x91, 0x92],
                        h,
                        &[0x01],
                    ]
                    .concat(),
                )])])
            }),
            Expect::Rejects(Reason::Invalid),
        ),
        (
            "store array lora_id",
            4,
            Box::new(move |h: &[u8]| {
                in_batch(&[&[
                    &[0x96][..],
                    &k("BlockStored"),
                    &[0x92, 11, 22, 0xc0, 0x98, 1, 2, 3, 4, 5, 6, 7, 8, 0x04],
                    h,
                ]
                .concat()])
            }),
            Expect::Stores,
        ),
        (
            "store array position 11",
            4,
            Box::new(move |h: &[u8]| {
                in_batch(&[&[
                    &[0x9c][..],
                    &k("BlockStored"),
                    &[
                        0x92, 11, 22, 0xc0, 0x98, 1, 2, 3, 4, 5, 6, 7, 8, 0x04, 0xc0, 0xc0, 0xc0,
                        0xc0, 0xc0, 0xc0,
                    ],
                    h,
                ]
                .concat()])
            }),
            Expect::Stores,
        ),
        (
            "array event tag",
            4,
            Box::new(|h: &[u8]| in_batch(&[&[&[0x92][..], h, &[0x01]].concat()])),
            Expect::Rejects(Reason::Invalid),
        ),
        (
            "map event type",
            4,
            Box::new(move |h: &[u8]| in_batch(&[&[&[0x81][..], &k("type"), h].concat()])),
            Expect::Rejects(Reason::Invalid),
        ),
        (
            "remove medium",
            4,
            Box::new(move |h: &[u8]| {
                in_batch(&[&[&[0x93][..], &k("BlockRemoved"), &[0x91, 0x05], h].concat()])
            }),
            Expect::Removes,
        ),
        (
            "cleared extra",
            4,
            Box::new(move |h: &[u8]| {
                in_batch(&[&[&[0x92][..], &k("AllBlocksCleared"), h].concat()])
            }),
            Expect::Clears,
        ),
        (
            "unknown tag extra",
            4,
            Box::new(move |h: &[u8]| in_batch(&[&[&[0x92][..], &k("Foo"), h].concat()])),
            Expect::Rejects(Reason::UnknownType),
        ),
        (
            "token element",
            5,
            Box::new(move |h: &[u8]| {
                in_batch(&[&[
                    &[0x84][..],
                    &k("type"),
                    &k("BlockStored"),
                    &k("block_hashes"),
                    &[0x91, 0x01],
                    &k("token_ids"),
                    &[0x95, 1, 2, 3, 4],
                    h,
                    &k("block_size"),
                    &[0x04],
                ]
                .concat()])
            }),
            Expect::Rejects(Reason::Invalid),
        ),
        (
            "block_hashes element",
            5,
            Box::new(move |h: &[u8]| {
                in_batch(&[&[
                    &[0x84][..],
                    &k("type"),
                    &k("BlockStored"),
                    &k("block_hashes"),
                    &[0x92, 0x01],
                    h,
                    &k("token_ids"),
                    &[0x94, 1, 2, 3, 4],
                    &k("block_size"),
                    &[0x04],
                ]
                .concat()])
            }),
            Expect::Rejects(Reason::Invalid),
        ),
        (
            "parent",
            4,
            Box::new(move |h: &[u8]| in_batch(&[&store_map(&[(&k("parent_block_hash"), h)])])),
            Expect::Rejects(Reason::Invalid),
        ),
        (
            "block_size",
            4,
            Box::new(move |h: &[u8]| in_batch(&[&store_map(&[(&k("block_size"), h)])])),
            Expect::Rejects(Reason::Invalid),
        ),
    ]
}

fn outcome(d: &DecodedBatch) -> Option<Expect> {
    let rejected: u32 = d.rejected.iter().sum();
    match (d.events.as_slice(), rejected) {
        ([], 0) => Some(Expect::Nothing),
        ([Converted::Stored(_)], 0) => Some(Expect::Stores),
        ([Converted::Removed(_)], 0) => Some(Expect::Removes),
        ([Converted::Cleared], 0) => Some(Expect::Clears),
        ([], 1) => Reason::ALL
            .into_iter()
            .find(|&r| d.rejected[r as usize] == 1)
            .map(Expect::Rejects),
        _ => None,
    }
}

#[test]
fn nesting_at_and_over_the_limit() {
    assert_eq!(MAX_DEPTH, 64);
    let mut h = Harness::new("nesting");

    // the brief's shape: [ts, [[[...]]], 0], the events list at level 2, a nil at level `leaf`
    for leaf_level in 3..=70u32 {
        let mut b = vec![0x93, 0x00];
        b.extend(std::iter::repeat_n(0x91, (leaf_level - 2) as usize));
        b.push(0xc0);
        b.push(0x00);
        let ok = h.run(&b, 4);
        assert_eq!(ok, leaf_level <= 64, "nil at level {leaf_level}");
        if ok {
            // the single event is an array whose tag is not a string (or a nil): invalid
            assert_eq!(
                decode_engine_batch(&b, 4).unwrap().rejected[Reason::Invalid as usize],
                1
            );
        }
    }

    // every site where the decoder reads or skips a value, with the deepest value at 60..=66
    let leaves: [&[u8]; 8] = [
        &[0xc0],
        &[0x90],
        &[0x80],
        &[0x05],
        &[0xa1, b'x'],
        &[0xc4, 0x01, 0xff],
        &[0xd4, 0x01, 0x00],
        &[0xcb, 0x40, 0x10, 0, 0, 0, 0, 0, 0],
    ];
    let styles = [
        Wrap::Array,
        Wrap::MapValue,
        Wrap::MapKey,
        Wrap::Alternate,
        Wrap::Random(7),
        Wrap::Random(8),
    ];
    let mut checked = 0;
    for (name, hole, build, expect) in sites() {
        // sanity: with a shallow filler the site behaves as described
        let shallow = build(&[0x91, 0x90]);
        let d = decode_engine_batch(&shallow, 4)
            .unwrap_or_else(|| panic!("{name}: shallow case malformed: {}", hex(&shallow)));
        assert_eq!(
            outcome(&d),
            Some(expect),
            "{name}: shallow case {}",
            hex(&shallow)
        );
        for deepest in 60..=66u32 {
            for leaf in leaves {
                for style in styles {
                    let b = build(&wrapped(deepest - hole, leaf, style));
                    let ok = h.run(&b, 4);
                    assert_eq!(ok, deepest <= 64, "{name}: deepest value at level {deepest} ({style:?}, leaf {leaf:02x?}): {}", hex(&b));
                    if ok {
                        let d = decode_engine_batch(&b, 4).unwrap();
                        assert_eq!(
                            outcome(&d),
                            Some(expect),
                            "{name} at level {deepest}: {d:?}"
                        );
                        if expect == Expect::Stores {
                            let u = unpack(
                                &Ingestor::new(IngestorConfig {
                                    kv_block_size: 4,
                                    worker_id: 1,
                                    mode: Mode::EventPlane,
                                    max_dp_ranks: 64,
                                    dp_ranks: None,
                                    local_indexer: None,
                                    ..IngestorConfig::new(1, 0)
                                })
                                .unwrap()
                                .ingest(&b, 0),
                            );
                            assert_eq!(u.payloads.len(), 1, "{name}");
                        }
                    }
                    checked += 1;
                }
            }
        }
    }
    println!("[nesting] {checked} site/level/leaf/style combinations asserted exactly");

    // random deep values placed anywhere a grammar batch can hold junk
    let mut g = gen(6);
    for _ in 0..scale(60_000) {
        reroll(&mut g);
        let mut b = vec![0x93];
        let d = g.r.range(58, 70) as u32;
        match g.r.below(3) {
            0 => {
                g.chain(&mut b, d);
                b.extend_from_slice(&[0x90, 0x00]);
            }
            1 => {
                g.ts(&mut b);
                b.push(0x92);
                g.event(&mut b);
                g.chain(&mut b, d);
                b.push(0x00);
            }
            _ => {
                g.ts(&mut b);
                b.push(0x91);
                let mut ev = Vec::new();
                g.store(&mut ev);
                // replace the store by a map with a deep unknown field in front of it
                if let Ok(Node::Map(mut kv)) = parse_all(&ev) {
                    let mut deep = Vec::new();
                    g.chain(&mut deep, d);
                    if let Ok(node) = parse_all(&deep) {
                        kv.insert(0, (Node::Str(b"zz".to_vec()), node));
                    }
                    let any = g.any;
                    b.extend(encode(&Node::Map(kv), &mut g.r, any));
                } else {
                    b.extend(ev);
                }
                b.push(0x00);
            }
        }
        let bs = g.bs;
        h.run(&b, bs);
    }
    h.finish();
}

// ------------------------------------------------------------------------------------------------
// the allocation bound, on the two shapes the fuzzing above found

/// `[0, [nil × 4097], 0]`: 4,103 bytes of one-byte events, each `invalid`. The decoder materialises
/// every event as an `EngineEvent` (168 bytes each today) before converting, so one input byte costs
/// 168 bytes in a single Vec, or 336 once the Vec has doubled past its 4096-element reservation.
#[test]
fn one_byte_events_are_not_amplified_in_memory() {
    let mut b = vec![0x93, 0x00, 0xdc, 0x10, 0x01];
    b.extend(std::iter::repeat_n(0xc0u8, 4097));
    b.push(0x00);
    println!(
        "size_of::<EngineEvent>() = {} bytes",
        std::mem::size_of::<EngineEvent>()
    );
    let mut ing = Ingestor::new(IngestorConfig {
        kv_block_size: 4,
        worker_id: 1,
        mode: Mode::EventPlane,
        max_dp_ranks: 64,
        dp_ranks: None,
        local_indexer: None,
        ..IngestorConfig::new(1, 0)
    })
    .unwrap();
    reset_peak();
    let d = decode_engine_batch(&b, 4);
    let pk_decode = peak();
    reset_peak();
    let u = unpack(&ing.ingest(&b, 0));
    let pk_ingest = peak();
    assert_eq!(d.unwrap().rejected[Reason::Invalid as usize], 4097);
    assert_eq!(u.rejected[Reason::Invalid as usize], 4097);
    for (what, pk) in [("decode_engine_batch", pk_decode), ("ingest", pk_ingest)] {
        assert!(
            pk <= alloc_budget(b.len()),
            "{what}: largest single allocation {pk} B for a {}-byte batch ({:.0} x the input; budget {})",
            b.len(),
            pk as f64 / b.len() as f64,
            alloc_budget(b.len())
        );
    }
}

/// A malformed batch whose events header claims 4000 elements that are not all there: the decoder
/// reserves `min(claim, 4096)` events (about 672 kB) before it finds out, for a 4,005-byte input.
#[test]
fn a_truncated_events_list_does_not_reserve_from_its_header() {
    let mut b = vec![0x93, 0x00, 0xdc, 0x0f, 0xa0];
    b.extend(std::iter::repeat_n(0xc0u8, 3999));
    b.push(0x00); // the rank is consumed as the 4000th event; then the batch is truncated
    reset_peak();
    let d = decode_engine_batch(&b, 4);
    let pk = peak();
    assert!(d.is_none());
    assert!(peek_batch(&b).is_err());
    assert!(
        pk <= alloc_budget(b.len()),
        "largest single allocation {pk} B for a {}-byte malformed batch ({:.0} x; budget {})",
        b.len(),
        pk as f64 / b.len() as f64,
        alloc_budget(b.len())
    );
}

/// The per-test input counts add up to at least a million (kept in sync by hand; each test prints
/// its own count).
#[test]
fn input_budget_is_at_least_a_million() {
    let fx = fixtures();
    let point: usize = fx
        .iter()
        .map(|f| {
            let n = f.bytes.len();
            let overwrites: usize = f
                .bytes
                .iter()
                .map(|&b| INTERESTING.iter().filter(|&&v| v != b).count())
                .sum();
            1 + n * 2 + overwrites + n * 4 + (n + 1) * 8 + 4
        })
        .sum();
    let nesting = 68 + sites().len() * 7 * 8 * 6 + 60_000;
    let total = point + 200_000 + 120_000 + 200_000 + 230_000 + 100_000 + nesting;
    println!("[budget] {point} point mutations, {total} inputs in all at scale 1");
    assert!(total >= 1_000_000, "{total}");
}
