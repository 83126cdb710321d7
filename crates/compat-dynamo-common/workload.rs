//! A deterministic engine workload shared by the Dynamo compatibility crates (included with
//! `#[path]`; it depends only on std and dynamo-kv-core).
//!
//! It models what vLLM engines publish on their ZeroMQ KV-event socket: per `(worker, dp rank)` a
//! GPU prefix cache that stores request chains (shared prefixes, LoRA adapters, cache salts),
//! evicts leaf blocks, and is sometimes reset; optionally CPU/disk offload tiers. Batches are
//! encoded as the engine simulator encodes them: `[ts: f64, events, dp_rank]`, each event a tagged
//! map or the vLLM positional array `[tag, hashes, parent, tokens, block_size, lora_id, medium,
//! lora_name]`; a salted store is a map with `cache_salt`.
//!
//! Engine block hashes are a pure function of (parent hash, tokens, LoRA, salt), the same on every
//! worker, as with Dynamo's launchers (a fixed PYTHONHASHSEED): Dynamo's trees assume one block hash
//! per token path across workers.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};

use dynamo_kv_core::hash::xxh3_seeded;
use dynamo_kv_core::msgpack::Writer;

/// splitmix64: small, fast, and the same on every platform.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    pub fn token(&mut self) -> u32 {
        if self.chance(0.9) {
            self.below(50_000) as u32
        } else {
            self.next_u64() as u32
        }
    }
}

#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub seed: u64,
    pub batches: usize,
    pub block_size: u32,
    /// `(worker_id, dp ranks)` per worker; one Ingestor each.
    pub workers: Vec<(u64, Vec<u32>)>,
    /// LoRA adapters requests use (None: the base model), picked uniformly.
    pub loras: Vec<Option<String>>,
    /// Cache salts requests use (None: unsalted), picked uniformly.
    pub salts: Vec<Option<String>>,
    /// Also publish CPU / disk offload tier events.
    pub lower_tiers: bool,
    /// Sometimes re-announce an already cached block (a store the engine repeats).
    pub duplicate_stores: bool,
}

/// What a request hashed: its tokens and the hash identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sequence {
    pub tokens: Vec<u32>,
    pub lora: Option<String>,
    pub salt: Option<String>,
}

/// One engine block: its tokens and the request identity that hashed it.
#[derive(Debug, Clone)]
pub struct BlockInfo {
    pub tokens: Vec<u32>,
    pub lora: Option<String>,
    pub salt: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Batch {
    /// Index into `WorkloadConfig::workers`.
    pub worker: usize,
    pub dp_rank: u32,
    pub bytes: Vec<u8>,
}

/// The engine's view of one tier of one rank: live blocks (prefix-closed: a block's parent is live
/// while it is), with their parent and live child count.
#[derive(Default)]
struct Tier {
    live: HashMap<u64, (Option<u64>, u32)>,
}

impl Tier {
    fn add(&mut self, hash: u64, parent: Option<u64>) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.live.entry(hash) {
            e.insert((parent, 0));
            if let Some(p) = parent {
                if let Some(e) = self.live.get_mut(&p) {
                    e.1 += 1;
                }
            }
        }
    }
    /// Removes a leaf; returns false when `hash` is not a live leaf.
    fn remove_leaf(&mut self, hash: u64) -> bool {
        match self.live.get(&hash) {
            Some(&(parent, 0)) => {
                self.live.remove(&hash);
                if let Some(p) = parent {
                    if let Some(e) = self.live.get_mut(&p) {
                        e.1 -= 1;
                    }
                }
                true
            }
            _ => false,
        }
    }
    fn leaves(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .live
            .iter()
            .filter(|(_, &(_, c))| c == 0)
            .map(|(&h, _)| h)
            .collect();
        v.sort_unstable(); // deterministic regardless of HashMap order
        v
    }
}

/// One engine event to encode (see `engine_batch`).
pub enum Ev {
    Stored {
        parent: Option<u64>,
        hashes: Vec<u64>,
        tokens: Vec<u32>,
        lora: Option<String>,
        salt: Option<String>,
        medium: Option<&'static str>,
    },
    Removed {
        hashes: Vec<u64>,
        medium: Option<&'static str>,
    },
    Cleared,
}

pub struct Workload {
    pub cfg: WorkloadConfig,
    pub batches: Vec<Batch>,
    /// Every engine block hash ever stored, with what it hashed.
    pub blocks: HashMap<u64, BlockInfo>,
    /// Every request sequence stored on the GPU tier (for queries), in first-stored order.
    pub sequences: Vec<Sequence>,
    /// Counts of what was generated.
    pub stats: HashMap<&'static str, usize>,
}

/// The engine's (vLLM-like) chained block hash: a function of the parent's hash, the block's tokens
/// and the request identity, identical on every worker.
pub fn engine_block_hash(
    parent: Option<u64>,
    tokens: &[u32],
    lora: Option<&str>,
    salt: Option<&str>,
) -> u64 {
    let mut bytes = Vec::with_capacity(8 + tokens.len() * 4 + 32);
    bytes.extend_from_slice(&parent.unwrap_or(0x5eed).to_le_bytes());
    for t in tokens {
        bytes.extend_from_slice(&t.to_le_bytes());
    }
    bytes.push(0xff);
    bytes.extend_from_slice(lora.unwrap_or("").as_bytes());
    bytes.push(0xff);
    bytes.extend_from_slice(salt.unwrap_or("").as_bytes());
    xxh3_seeded(&bytes, 0x00e4_91e0)
}

impl Workload {
    pub fn generate(cfg: WorkloadConfig) -> Workload {
        let mut rng = Rng::new(cfg.seed);
        let bs = cfg.block_size as usize;
        // Shared documents (system prompts, few-shot prefixes) of 2..=12 blocks.
        let docs: Vec<Vec<u32>> = (0..40)
            .map(|_| (0..bs * (2 + rng.below(11))).map(|_| rng.token()).collect())
            .collect();
        let mut gpu: HashMap<(usize, u32), Tier> = HashMap::new();
        let mut lower: HashMap<(usize, u32), Tier> = HashMap::new();
        let mut blocks: HashMap<u64, BlockInfo> = HashMap::new();
        let mut sequences = Vec::new();
        let mut seen_sequences = HashSet::new();
        let mut stats: HashMap<&'static str, usize> = HashMap::new();
        let mut batches = Vec::with_capacity(cfg.batches);
        let mut buf = Vec::new();
        for b in 0..cfg.batches {
            let worker = rng.below(cfg.workers.len());
            let dp_rank = *rng.pick(&cfg.workers[worker].1);
            let key = (worker, dp_rank);
            let n_events = 1 + rng.below(3);
            let mut events = Vec::new();
            for _ in 0..n_events {
                let roll = rng.below(1000);
                let g = gpu.entry(key).or_default();
                if roll < 3 {
                    g.live.clear();
                    lower.entry(key).or_default().live.clear();
                    events.push(Ev::Cleared);
                    *stats.entry("cleared").or_default() += 1;
                    continue;
                }
                if cfg.lower_tiers && roll < 90 {
                    // offload tier: copy a stored GPU chain to CPU / disk, or evict a leaf there
                    let t = lower.entry(key).or_default();
                    let medium = if rng.chance(0.8) { "CPU" } else { "DISK" };
                    let leaves = t.leaves();
                    if !leaves.is_empty() && rng.chance(0.4) {
                        let h = *rng.pick(&leaves);
                        t.remove_leaf(h);
                        events.push(Ev::Removed {
                            hashes: vec![h],
                            medium: Some(medium),
                        });
                        *stats.entry("lower_removed").or_default() += 1;
                    } else if let Some(seq) = pick_stored(&mut rng, &sequences) {
                        let seq: Sequence = seq.clone();
                        let chain = chain_of(&seq, bs);
                        let start = chain
                            .iter()
                            .take_while(|(h, _)| t.live.contains_key(h))
                            .count();
                        if start < chain.len() {
                            let parent = (start > 0).then(|| chain[start - 1].0);
                            for (i, (h, _)) in chain.iter().enumerate().skip(start) {
                                t.add(*h, if i == 0 { None } else { Some(chain[i - 1].0) });
                            }
                            events.push(Ev::Stored {
                                parent,
                                hashes: chain[start..].iter().map(|c| c.0).collect(),
                                tokens: seq.tokens[start * bs..chain.len() * bs].to_vec(),
                                lora: seq.lora.clone(),
                                salt: seq.salt.clone(),
                                medium: Some(medium),
                            });
                            *stats.entry("lower_stored").or_default() += 1;
                        }
                    }
                    continue;
                }
                let over = g.live.len() > 400;
                if over || roll < 380 {
                    // evict 1..=4 leaves, one after another (a parent may become a leaf)
                    let mut hashes = Vec::new();
                    for _ in 0..1 + rng.below(4) {
                        let leaves = g.leaves();
                        if leaves.is_empty() {
                            break;
                        }
                        let h = *rng.pick(&leaves);
                        g.remove_leaf(h);
                        hashes.push(h);
                    }
                    if !hashes.is_empty() {
                        *stats.entry("removed_blocks").or_default() += hashes.len();
                        let medium = if rng.chance(0.8) { Some("GPU") } else { None };
                        events.push(Ev::Removed { hashes, medium });
                    }
                    continue;
                }
                // a request: a shared document prefix and a fresh suffix
                let seq = if !sequences.is_empty() && rng.chance(0.25) {
                    // a request repeated on another worker or after eviction
                    pick_stored(&mut rng, &sequences).unwrap().clone()
                } else {
                    let doc = rng.pick(&docs);
                    let k = 1 + rng.below(doc.len() / bs);
                    let mut tokens = doc[..k * bs].to_vec();
                    for _ in 0..bs * rng.below(5) {
                        tokens.push(rng.token());
                    }
                    // vLLM keeps a partial last block out of the prefix cache
                    let lora = rng.pick(&cfg.loras).clone();
                    let salt = rng.pick(&cfg.salts).clone();
                    Sequence { tokens, lora, salt }
                };
                let chain = chain_of(&seq, bs);
                for (h, range) in &chain {
                    blocks.entry(*h).or_insert_with(|| BlockInfo {
                        tokens: seq.tokens[range.clone()].to_vec(),
                        lora: seq.lora.clone(),
                        salt: seq.salt.clone(),
                    });
                }
                if seen_sequences.insert(seq.clone()) {
                    sequences.push(seq.clone());
                }
                let start = chain
                    .iter()
                    .take_while(|(h, _)| g.live.contains_key(h))
                    .count();
                let (start, dup) = if start == chain.len() {
                    // already cached: sometimes the engine re-announces the last block
                    if !cfg.duplicate_stores || !rng.chance(0.2) {
                        continue;
                    }
                    (chain.len() - 1, true)
                } else {
                    (start, false)
                };
                *stats
                    .entry(if dup { "duplicate_stores" } else { "stores" })
                    .or_default() += 1;
                // one store, or two chained stores (a prefill split over two steps)
                let split = if chain.len() - start >= 2 && rng.chance(0.3) {
                    start + 1 + rng.below(chain.len() - start - 1)
                } else {
                    chain.len()
                };
                for (from, to) in [(start, split), (split, chain.len())] {
                    if from == to {
                        continue;
                    }
                    for (i, (h, _)) in chain.iter().enumerate().take(to).skip(from) {
                        g.add(*h, if i == 0 { None } else { Some(chain[i - 1].0) });
                    }
                    let mut tokens = seq.tokens[from * bs..to * bs].to_vec();
                    if to == chain.len() && rng.chance(0.3) {
                        // vLLM sends the tokens of a trailing partial block too; they hash nothing
                        tokens.extend((0..rng.below(bs)).map(|_| rng.token()));
                    }
                    events.push(Ev::Stored {
                        parent: (from > 0).then(|| chain[from - 1].0),
                        hashes: chain[from..to].iter().map(|c| c.0).collect(),
                        tokens,
                        lora: seq.lora.clone(),
                        salt: seq.salt.clone(),
                        medium: if rng.chance(0.9) { Some("GPU") } else { None },
                    });
                }
            }
            if events.is_empty() {
                continue;
            }
            buf.clear();
            encode_batch(
                &mut buf,
                &mut rng,
                b as f64,
                &events,
                dp_rank,
                cfg.block_size,
            );
            batches.push(Batch {
                worker,
                dp_rank,
                bytes: buf.clone(),
            });
        }
        Workload {
            cfg,
            batches,
            blocks,
            sequences,
            stats,
        }
    }
}

fn pick_stored<'a>(rng: &mut Rng, sequences: &'a [Sequence]) -> Option<&'a Sequence> {
    if sequences.is_empty() {
        None
    } else {
        // favour recent requests, as a cache does
        let n = sequences.len();
        let back = rng.below(n.min(300));
        Some(&sequences[n - 1 - back])
    }
}

/// The engine block hashes of a sequence's complete blocks, with each block's token range.
pub fn chain_of(seq: &Sequence, bs: usize) -> Vec<(u64, std::ops::Range<usize>)> {
    let mut parent = None;
    (0..seq.tokens.len() / bs)
        .map(|i| {
            let r = i * bs..(i + 1) * bs;
            let h = engine_block_hash(
                parent,
                &seq.tokens[r.clone()],
                seq.lora.as_deref(),
                seq.salt.as_deref(),
            );
            parent = Some(h);
            (h, r)
        })
        .collect()
}

/// One engine batch of `events` for `dp_rank`, encoded as the workload encodes its own (a salted store
/// is a map; the others a map or an array, picked by `seed`).
pub fn engine_batch(events: &[Ev], dp_rank: u32, block_size: u32, seed: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_batch(
        &mut buf,
        &mut Rng::new(seed),
        0.0,
        events,
        dp_rank,
        block_size,
    );
    buf
}

fn encode_batch(
    buf: &mut Vec<u8>,
    rng: &mut Rng,
    ts: f64,
    events: &[Ev],
    dp_rank: u32,
    block_size: u32,
) {
    let mut w = Writer::new(buf);
    w.array(3);
    w.buf.push(0xcb);
    w.buf.extend_from_slice(&(1.7e9 + ts).to_be_bytes());
    w.array(events.len());
    for ev in events {
        let as_map = rng.chance(0.5);
        match ev {
            Ev::Cleared => {
                if as_map {
                    w.map(1);
                    w.str("type");
                } else {
                    w.array(1);
                }
                w.str("AllBlocksCleared");
            }
            Ev::Removed { hashes, medium } => {
                if as_map {
                    w.map(3);
                    w.str("type");
                    w.str("BlockRemoved");
                    w.str("block_hashes");
                } else {
                    w.array(3);
                    w.str("BlockRemoved");
                }
                w.array(hashes.len());
                for &h in hashes {
                    w.uint(h);
                }
                if as_map {
                    w.str("medium");
                }
                match medium {
                    Some(m) => w.str(m),
                    None => w.nil(),
                }
            }
            Ev::Stored {
                parent,
                hashes,
                tokens,
                lora,
                salt,
                medium,
            } => {
                let as_map = as_map || salt.is_some();
                if as_map {
                    w.map(if salt.is_some() { 9 } else { 8 });
                    w.str("type");
                    w.str("BlockStored");
                    w.str("block_hashes");
                } else {
                    w.array(8);
                    w.str("BlockStored");
                }
                w.array(hashes.len());
                for &h in hashes {
                    w.uint(h);
                }
                if as_map {
                    w.str("parent_block_hash");
                }
                w.opt_uint(*parent);
                if as_map {
                    w.str("token_ids");
                }
                w.array(tokens.len());
                for &t in tokens {
                    w.uint(t as u64);
                }
                if as_map {
                    w.str("block_size");
                }
                w.uint(block_size as u64);
                if as_map {
                    w.str("lora_id");
                }
                w.nil();
                if as_map {
                    w.str("medium");
                }
                match medium {
                    Some(m) => w.str(m),
                    None => w.nil(),
                }
                if as_map {
                    w.str("lora_name");
                }
                match lora {
                    Some(l) => w.str(l),
                    None => w.nil(),
                }
                if let Some(s) = salt {
                    w.str("cache_salt");
                    w.str(s);
                }
            }
        }
    }
    w.uint(dp_rank as u64);
}
