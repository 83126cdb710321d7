//! The trace and the reference model shared by the side-by-side index benchmark (src/main.rs) and
//! its agreement test (tests/).
//!
//! The trace is Mooncake-like: requests are chains of blocks that share long prefixes (a few
//! hundred system prompts grouped under common preambles, then multi-turn sessions that grow turn
//! by turn), routed mostly to the worker that served the session before. Each worker is a prefix
//! cache of fixed capacity that stores what a request misses and evicts its least recently used
//! leaf blocks, as an engine's LRU free queue does; the router events are what it would publish.
//!
//! Block hashes are either one engine hash per token path, the same on every worker (a fixed hash
//! seed), or per worker (each engine seeds its own hashes, as vLLM does without a fixed seed).

#[path = "../../compat-dynamo-common/workload.rs"]
mod workload;

use std::collections::{BTreeSet, HashMap};

use dynamo_kv_core::wire::{write_router_event_msgpack, EventData, RouterEvent, StoredBlock};
use dynamo_kv_router::protocols::{LocalBlockHash, OverlapScores, RouterEvent as DynEvent};
pub use workload::Rng;

/// Blocks per `find_matches` query.
pub const QUERY_BLOCKS: usize = 64;

#[derive(Debug, Clone)]
pub struct TraceConfig {
    pub seed: u64,
    pub workers: usize,
    /// Blocks each worker's cache holds before it evicts.
    pub capacity: usize,
    /// System prompts (each under one of `prompts / 12` shared preambles).
    pub prompts: usize,
    /// The build stream ends once the workers hold this many (worker, block) entries in all.
    pub build_entries: usize,
    /// The mixed stream that follows carries this many blocks (stored blocks + removed hashes).
    pub mixed_blocks: usize,
    /// Queries per set.
    pub queries: usize,
    /// Each worker hashes the same tokens to its own block hashes.
    pub per_worker_hashes: bool,
}

impl TraceConfig {
    /// The benchmark's trace: 64 workers, about 1 M entries at the end of the build stream.
    pub fn standard(per_worker_hashes: bool) -> Self {
        TraceConfig {
            seed: 0x6d6f_6f6e,
            workers: 64,
            capacity: 20_000,
            prompts: 300,
            build_entries: 1_000_000,
            mixed_blocks: 2_000_000,
            queries: 20_000,
            per_worker_hashes,
        }
    }
}

pub struct Trace {
    pub cfg: TraceConfig,
    /// Events until the workers hold `build_entries` entries.
    pub build: Vec<RouterEvent>,
    /// The events after it: stores and LRU evictions in steady state.
    pub mixed: Vec<RouterEvent>,
    /// 64-block queries (tokens hashes) drawn from the sessions live at the end of the build
    /// stream: a session's chain, continued by fresh blocks when shorter.
    pub queries: Vec<Vec<u64>>,
    /// Same, drawn at the end of the mixed stream.
    pub late_queries: Vec<Vec<u64>>,
    pub build_blocks: u64,
    pub mixed_blocks: u64,
    pub build_removed: u64,
    pub mixed_removed: u64,
    pub peak_entries: usize,
}

/// An event of dp rank 0.
pub fn event(worker_id: u64, event_id: u64, data: EventData) -> RouterEvent {
    RouterEvent {
        worker_id,
        event_id,
        dp_rank: 0,
        data,
    }
}

/// A store of `(block hash, tokens hash)` pairs under `parent`.
pub fn stored_data(parent: Option<u64>, blocks: impl Iterator<Item = (u64, u64)>) -> EventData {
    EventData::Stored {
        parent_hash: parent,
        blocks: blocks
            .map(|(block_hash, tokens_hash)| StoredBlock {
                block_hash,
                tokens_hash,
                mm_extra_info: None,
            })
            .collect(),
    }
}

/// Stored blocks plus removed hashes of an event.
pub fn blocks_of(ev: &RouterEvent) -> u64 {
    match &ev.data {
        EventData::Stored { blocks, .. } => blocks.len() as u64,
        EventData::Removed { block_hashes } => block_hashes.len() as u64,
        EventData::Cleared => 0,
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One worker's cache: global block id → (live children, last use); leaves ordered by last use.
#[derive(Default)]
struct Cache {
    live: HashMap<u32, (u32, u64)>,
    leaves: BTreeSet<(u64, u32)>,
}

struct Session {
    chain: Vec<u32>,
    home: usize,
}

struct Gen {
    rng: Rng,
    /// Per global block: its tokens hash, parent block and shared engine hash.
    tokens: Vec<u64>,
    parent: Vec<u32>,
    hash: Vec<u64>,
    worker_seed: Vec<u64>,
    per_worker: bool,
}

const NONE: u32 = u32::MAX;

impl Gen {
    fn block(&mut self, parent: u32) -> u32 {
        let id = self.tokens.len() as u32;
        let t = self.rng.next_u64();
        let ph = if parent == NONE {
            0x5eed
        } else {
            self.hash[parent as usize]
        };
        self.tokens.push(t);
        self.parent.push(parent);
        self.hash.push(mix(ph ^ mix(t)));
        id
    }
    fn extend(&mut self, chain: &mut Vec<u32>, n: usize) {
        for _ in 0..n {
            let p = chain.last().copied().unwrap_or(NONE);
            let b = self.block(p);
            chain.push(b);
        }
    }
    fn hash_on(&self, worker: usize, id: u32) -> u64 {
        let h = self.hash[id as usize];
        if self.per_worker {
            mix(h ^ self.worker_seed[worker])
        } else {
            h
        }
    }
    fn query(&mut self, sessions: &[Session]) -> Vec<u64> {
        let n = sessions.len();
        let s = &sessions[n - 1 - self.rng.below(n.min(1024))];
        let mut q: Vec<u64> = s
            .chain
            .iter()
            .take(QUERY_BLOCKS)
            .map(|&b| self.tokens[b as usize])
            .collect();
        while q.len() < QUERY_BLOCKS {
            q.push(self.rng.next_u64()); // the new turn: blocks nobody holds
        }
        q
    }
}

impl Trace {
    pub fn generate(cfg: TraceConfig) -> Trace {
        let mut g = Gen {
            rng: Rng::new(cfg.seed),
            tokens: Vec::new(),
            parent: Vec::new(),
            hash: Vec::new(),
            worker_seed: Vec::new(),
            per_worker: cfg.per_worker_hashes,
        };
        // the same stream of random draws with either hashing: worker seeds come from their own rng
        let mut seeds = Rng::new(cfg.seed ^ 0xa5a5);
        g.worker_seed = (0..cfg.workers).map(|_| seeds.next_u64()).collect();
        let preambles: Vec<Vec<u32>> = (0..(cfg.prompts / 12).max(1))
            .map(|_| {
                let mut c = Vec::new();
                let n = 2 + g.rng.below(7);
                g.extend(&mut c, n);
                c
            })
            .collect();
        let prompts: Vec<Vec<u32>> = (0..cfg.prompts)
            .map(|_| {
                let mut c = g.rng.pick(&preambles).clone();
                let n = 4 + g.rng.below(37);
                g.extend(&mut c, n);
                c
            })
            .collect();
        let mut caches: Vec<Cache> = (0..cfg.workers).map(|_| Cache::default()).collect();
        let mut event_ids = vec![0u64; cfg.workers];
        let mut sessions: Vec<Session> = Vec::new();
        let mut clock = 0u64;
        let mut entries = 0usize;
        let mut t = Trace {
            cfg: cfg.clone(),
            build: Vec::new(),
            mixed: Vec::new(),
            queries: Vec::new(),
            late_queries: Vec::new(),
            build_blocks: 0,
            mixed_blocks: 0,
            build_removed: 0,
            mixed_removed: 0,
            peak_entries: 0,
        };
        let mut building = true;
        let mut mixed_so_far = 0u64;
        loop {
            // the request: a new session on a popular prompt, or the next turn of a recent one
            let si = if sessions.is_empty() || g.rng.chance(0.3) {
                let u = (g.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                let p = ((u * u) * cfg.prompts as f64) as usize;
                let mut chain = prompts[p.min(cfg.prompts - 1)].clone();
                let n = 1 + g.rng.below(8);
                g.extend(&mut chain, n);
                let home = g.rng.below(cfg.workers);
                sessions.push(Session { chain, home });
                if sessions.len() > 4096 {
                    sessions.remove(0);
                }
                sessions.len() - 1
            } else {
                let n = sessions.len();
                let si = n - 1 - g.rng.below(n.min(1024));
                let k = 2 + g.rng.below(15);
                let mut chain = std::mem::take(&mut sessions[si].chain);
                g.extend(&mut chain, k);
                sessions[si].chain = chain;
                si
            };
            let w = if g.rng.chance(0.85) {
                sessions[si].home
            } else {
                g.rng.below(cfg.workers)
            };
            sessions[si].home = w;
            let chain = if sessions[si].chain.len() > 200 {
                // a session this long ends here
                sessions.swap_remove(si).chain
            } else {
                sessions[si].chain.clone()
            };
            clock += 1;
            let c = &mut caches[w];
            let start = chain.iter().take_while(|b| c.live.contains_key(b)).count();
            for (i, b) in chain.iter().enumerate() {
                let stamp = (clock << 8) | i.min(255) as u64;
                if i < start {
                    let e = c.live.get_mut(b).unwrap();
                    if e.0 == 0 {
                        c.leaves.remove(&(e.1, *b));
                        c.leaves.insert((stamp, *b));
                    }
                    e.1 = stamp;
                } else {
                    c.live.insert(*b, (0, stamp));
                    c.leaves.insert((stamp, *b));
                    if i > 0 {
                        let p = chain[i - 1];
                        let e = c.live.get_mut(&p).unwrap();
                        if e.0 == 0 {
                            c.leaves.remove(&(e.1, p));
                        }
                        e.0 += 1;
                    }
                }
            }
            entries += chain.len() - start;
            let out = if building { &mut t.build } else { &mut t.mixed };
            if !building {
                mixed_so_far += (chain.len() - start) as u64;
            }
            if start < chain.len() {
                event_ids[w] += 1;
                out.push(event(
                    w as u64,
                    event_ids[w],
                    stored_data(
                        (start > 0).then(|| g.hash_on(w, chain[start - 1])),
                        chain[start..]
                            .iter()
                            .map(|&b| (g.hash_on(w, b), g.tokens[b as usize])),
                    ),
                ));
            }
            // evict least recently used leaves down to the capacity
            let mut evicted = Vec::new();
            while c.live.len() > cfg.capacity {
                let (_, b) = c.leaves.pop_first().unwrap();
                c.live.remove(&b);
                let p = g.parent[b as usize];
                if let Some(e) = c.live.get_mut(&p) {
                    e.0 -= 1;
                    if e.0 == 0 {
                        c.leaves.insert((e.1, p));
                    }
                }
                evicted.push(g.hash_on(w, b));
            }
            entries -= evicted.len();
            if !building {
                mixed_so_far += evicted.len() as u64;
            }
            if !evicted.is_empty() {
                event_ids[w] += 1;
                out.push(event(
                    w as u64,
                    event_ids[w],
                    EventData::Removed {
                        block_hashes: evicted,
                    },
                ));
            }
            t.peak_entries = t.peak_entries.max(entries);
            if building && entries >= cfg.build_entries {
                building = false;
                t.queries = (0..cfg.queries).map(|_| g.query(&sessions)).collect();
            } else if !building && mixed_so_far >= cfg.mixed_blocks as u64 {
                t.late_queries = (0..cfg.queries).map(|_| g.query(&sessions)).collect();
                break;
            }
        }
        let removed = |evs: &[RouterEvent]| {
            evs.iter()
                .filter(|e| matches!(e.data, EventData::Removed { .. }))
                .map(blocks_of)
                .sum()
        };
        t.build_blocks = t.build.iter().map(blocks_of).sum();
        t.mixed_blocks = t.mixed.iter().map(blocks_of).sum();
        t.build_removed = removed(&t.build);
        t.mixed_removed = removed(&t.mixed);
        t
    }
}

/// An event in Dynamo 1.6.1's types, decoded from the core's msgpack as a 1.6.1 router reads a
/// payload (an array of RouterEvents).
pub fn to_dynamo(ev: &RouterEvent) -> DynEvent {
    let mut msg = vec![0x91];
    write_router_event_msgpack(&mut msg, ev);
    rmp_serde::from_slice::<Vec<DynEvent>>(&msg)
        .expect("Dynamo 1.6.1 decodes the event")
        .remove(0)
}

pub fn to_local(q: &[u64]) -> Vec<LocalBlockHash> {
    q.iter().map(|&h| LocalBlockHash(h)).collect()
}

/// `(worker_id, dp_rank, score)`, non-zero scores, sorted.
pub type Scores = Vec<(u64, u32, u32)>;

fn nonzero_sorted(scores: impl Iterator<Item = (u64, u32, u32)>) -> Scores {
    let mut v: Scores = scores.filter(|s| s.2 > 0).collect();
    v.sort_unstable();
    v
}

pub fn dynamo_scores(m: &OverlapScores) -> Scores {
    nonzero_sorted(m.scores.iter().map(|(w, &s)| (w.worker_id, w.dp_rank, s)))
}

pub fn core_scores(m: &[dynamo_kv_core::Match]) -> Scores {
    nonzero_sorted(m.iter().map(|m| (m.worker_id, m.dp_rank, m.score)))
}

/// What an event did to the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefOutcome {
    Applied,
    ParentNotFound,
    BlockNotFound,
}

#[derive(Default)]
struct RefWorker {
    /// The worker's block hash → the path it names.
    by_hash: HashMap<u64, u32>,
    /// Path → how many of the worker's hashes name it.
    held: HashMap<u32, u32>,
}

/// The straightforward model: a path is a parent path and a tokens hash (interned, path 0 is the
/// root); a worker holds a set of paths, each named by its own block hashes. A worker scores the
/// number of leading query blocks whose paths it holds.
#[derive(Default)]
pub struct Reference {
    paths: HashMap<(u32, u64), u32>,
    workers: HashMap<(u64, u32), RefWorker>,
}

impl Reference {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn apply(&mut self, ev: &RouterEvent) -> RefOutcome {
        let next = self.paths.len() as u32 + 1;
        let w = self.workers.entry((ev.worker_id, ev.dp_rank)).or_default();
        match &ev.data {
            EventData::Stored {
                parent_hash,
                blocks,
            } => {
                let mut at = match parent_hash {
                    None => 0,
                    Some(p) => match w.by_hash.get(p) {
                        Some(&at) => at,
                        None => return RefOutcome::ParentNotFound,
                    },
                };
                let mut next = next;
                for b in blocks {
                    at = *self.paths.entry((at, b.tokens_hash)).or_insert_with(|| {
                        next += 1;
                        next - 1
                    });
                    if let Some(old) = w.by_hash.insert(b.block_hash, at) {
                        release(&mut w.held, old);
                    }
                    *w.held.entry(at).or_default() += 1;
                }
                RefOutcome::Applied
            }
            EventData::Removed { block_hashes } => {
                let mut out = RefOutcome::Applied;
                for h in block_hashes {
                    match w.by_hash.remove(h) {
                        Some(at) => release(&mut w.held, at),
                        None => out = RefOutcome::BlockNotFound,
                    }
                }
                out
            }
            EventData::Cleared => {
                self.workers.retain(|&(id, _), _| id != ev.worker_id);
                RefOutcome::Applied
            }
        }
    }

    /// (worker, block) entries: the block hashes the workers hold.
    pub fn entries(&self) -> usize {
        self.workers.values().map(|w| w.by_hash.len()).sum()
    }

    pub fn scores(&self, query: &[u64]) -> Scores {
        let mut path = Vec::with_capacity(query.len());
        let mut at = 0;
        for t in query {
            match self.paths.get(&(at, *t)) {
                Some(&p) => {
                    path.push(p);
                    at = p;
                }
                None => break,
            }
        }
        nonzero_sorted(self.workers.iter().map(|(&(id, rank), w)| {
            let s = path.iter().take_while(|p| w.held.contains_key(p)).count();
            (id, rank, s as u32)
        }))
    }
}

fn release(held: &mut HashMap<u32, u32>, at: u32) {
    if let Some(n) = held.get_mut(&at) {
        *n -= 1;
        if *n == 0 {
            held.remove(&at);
        }
    }
}

/// How a set of answers differs from the reference's.
#[derive(Debug, Default, Clone)]
pub struct Disagreement {
    pub queries: usize,
    pub differing_queries: usize,
    /// Worker scores below / above the reference's, and the blocks missed / credited beyond it.
    pub lower: usize,
    pub higher: usize,
    pub blocks_short: u64,
    pub blocks_over: u64,
}

impl Disagreement {
    pub fn add(&mut self, got: &Scores, want: &Scores) {
        self.queries += 1;
        if got == want {
            return;
        }
        self.differing_queries += 1;
        let g: HashMap<(u64, u32), u32> = got.iter().map(|&(w, r, s)| ((w, r), s)).collect();
        let e: HashMap<(u64, u32), u32> = want.iter().map(|&(w, r, s)| ((w, r), s)).collect();
        for k in g.keys().chain(e.keys().filter(|k| !g.contains_key(k))) {
            let (a, b) = (
                g.get(k).copied().unwrap_or(0),
                e.get(k).copied().unwrap_or(0),
            );
            if a < b {
                self.lower += 1;
                self.blocks_short += (b - a) as u64;
            } else if a > b {
                self.higher += 1;
                self.blocks_over += (a - b) as u64;
            }
        }
    }
}
