//! The radix index (SPEC 6): which worker `(worker_id, dp_rank)` holds which blocks, as a tree keyed by
//! the tokens hashes of the path from the root, so that `find_matches` can tell who holds the longest
//! prefix of a request.
//!
//! Layout, for memory and cache: nodes live in one arena (32 bytes each, grown by an eighth)
//! addressed by u32, which from 4 MiB on is a mapping of its own in 2 MiB pages (`pages`), as are
//! the holder sets' arena and the edge table; a node's single child and single holder are stored
//! inline (most nodes have one of each). The edges of nodes with several children live in one
//! open-addressing table keyed by (parent, tokens hash), so a step down costs two cache misses
//! (table slot, child), and a query starts loading the slot a step ahead, alongside the node, where
//! a bit per node (`branching`) says the node has several children; each such node also lists its
//! children for the cascade and the dump. Several holders go to a `HolderSet`, and the node keeps a
//! bitmask of its worker slots below 64, so that `find_matches` intersects worker sets with one AND
//! per level.
//!
//! A node has its own block hash (its first holder's). A holder of that hash is only its worker
//! slot (`HolderSet::plain_low`, a bitmask, for slots below 64; a sorted list above); a holder of
//! another hash (per-worker engine hashes) is an `Other` with an `Alias`. Each worker key has a
//! table of block hash → entry that stores the u32 entry (a node id for a plain holding, ALIAS |
//! alias otherwise) and reads the hash back through the node or alias (`table::HashTable`); per
//! slot it also keeps a tag byte and the top 16 bits of the hash's mix, so that a probe reads an
//! entry back almost only when it is the one sought, and a table rehashes from its own memory. A
//! stored or removed event prefetches its blocks' table groups before it walks the tree. On a trace
//! where engines share hashes this is about 38 bytes per (worker, block) entry, where a map of
//! (hash, node) and (worker, hash) holders took 90.
//!
//! Rules that are easy to miss:
//! - a node that loses its last holder is removed from the tree and its children are detached: blocks
//!   still held below it become unreachable (stale) but stay in their workers' maps until removed;
//! - a block hash stored at a new place leaves its old node first;
//! - `cleared` applies to every dp rank of the worker id (Dynamo semantics).
//!
//! Queries: `find_matches_with(&self, .., &mut MatchScratch)` reads the index only, the per-query
//! memory being the caller's, so several threads can query one index each with its own scratch;
//! `find_matches` / `find_matches_ref` (`&mut self`) use a scratch inside the index. Answers come
//! out in the worker-key order that `prepare_reads` keeps (the `&mut` queries call it; `&self`
//! queries sort the keys into the scratch while it is stale). For reads alongside a writer thread,
//! see `index_shared`.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

mod pages;
mod table;

pub use pages::mapped_bytes;

use table::{prefetch, Arena, HashTable};

use crate::hash::{compute_block_hashes_with, BlockHashOptions};
use crate::wire::{
    decode_router_events_encoded, BlockExtraInfo, DataRef, EventData, EventMeta, RouterEvent,
    StoredBlock, WireError,
};

const NIL: u32 = u32::MAX;
/// `Node::kids` with this bit set indexes `RadixIndex::kid_lists` (the edges are in `edges`);
/// otherwise it is the only child.
const MANY: u32 = 1 << 31;
/// `Node::worker` of a node without holders.
const NOBODY: u32 = u32::MAX;
/// `Node::worker` with this bit set: the holders are in `RadixIndex::sets[worker & !SPILLED]`. Worker
/// slots and set indexes stay below 2^31 - 1: that many would take hundreds of GB first.
const SPILLED: u32 = 1 << 31;
/// How many blocks of one event have their table groups prefetched before they are applied.
const PREFETCH_BLOCKS: usize = 64;
/// Worker slots below this are tracked by the bitmasks (`HolderSet::low`, the query's active mask).
const LOW: u32 = 64;

/// A hasher for block hashes: they are already well mixed, so a keyed multiply-xorshift is enough;
/// the per-process key keeps crafted inputs from choosing collisions.
#[derive(Clone)]
pub struct MixState(u64);

impl Default for MixState {
    fn default() -> Self {
        MixState(RandomState::new().build_hasher().finish() | 1)
    }
}

pub struct MixHasher(u64, u64);

impl BuildHasher for MixState {
    type Hasher = MixHasher;
    fn build_hasher(&self) -> MixHasher {
        MixHasher(0, self.0)
    }
}

impl Hasher for MixHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        let mut z = (self.0 ^ v ^ self.1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 32)).wrapping_mul(0xd6e8_feb8_6659_fd93);
        self.0 = z ^ (z >> 32);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ApplyOutcome {
    Applied = 0,
    ParentNotFound = 1,
    BlockNotFound = 2,
    InvalidBlockSequence = 3,
    /// A Dynamo 1.4+ event that does not describe the worker's GPU memory (another storage tier,
    /// or the cache-owner domain): not applied.
    Ignored = 4,
}

/// Outcome names, indexed by `ApplyOutcome as usize`.
pub const APPLY_OUTCOMES: [&str; 5] = [
    "applied",
    "parent_not_found",
    "block_not_found",
    "invalid_block_sequence",
    "ignored",
];

/// Bytes per record of `write_matches`.
pub const MATCH_RECORD_BYTES: usize = 24;

/// Writes matches into `out` (layout in ts/core/binding.ts: u32 N, then N records of
/// { u64 worker_id, u32 dp_rank, u32 score, u64 tree_size }, little-endian). Returns the bytes written,
/// or minus the bytes needed when `out` is too small (nothing is written then).
pub fn write_matches(matches: &[Match], out: &mut [u8]) -> i64 {
    let need = 4 + MATCH_RECORD_BYTES * matches.len();
    let Some(dst) = out.get_mut(..need) else {
        return -(need as i64);
    };
    dst[..4].copy_from_slice(&(matches.len() as u32).to_le_bytes());
    for (m, rec) in matches
        .iter()
        .zip(dst[4..].chunks_exact_mut(MATCH_RECORD_BYTES))
    {
        rec[..8].copy_from_slice(&m.worker_id.to_le_bytes());
        rec[8..12].copy_from_slice(&m.dp_rank.to_le_bytes());
        rec[12..16].copy_from_slice(&m.score.to_le_bytes());
        rec[16..].copy_from_slice(&m.tree_size.to_le_bytes());
    }
    need as i64
}

/// How much native memory an index has told a garbage-collected host about (napi's
/// adjust_external_memory), so that the host collects dropped indexes: without it, a process that
/// creates indexes keeps hundreds of MB of dead ones until its own heap fills.
#[derive(Debug, Default)]
pub struct MemoryReport {
    reported: i64,
    /// Work (blocks applied, or calls) since the estimate was last taken.
    pending: usize,
}

impl MemoryReport {
    /// True once about 1024 blocks (or calls) of work were done since the last estimate: the
    /// estimate is O(workers), so not on every call, yet one large event is never missed.
    pub fn due(&mut self, work: usize) -> bool {
        self.pending = self.pending.saturating_add(work.max(1));
        if self.pending >= 1024 {
            self.pending = 0;
            true
        } else {
            false
        }
    }

    /// The change to report for an index that now holds about `bytes` (None under 1 MB: not worth
    /// a call); `reported` records it once the host took it.
    pub fn change(&self, bytes: usize) -> Option<i64> {
        let delta = bytes.min(i64::MAX as usize) as i64 - self.reported;
        (delta.abs() >= 1 << 20).then_some(delta)
    }

    pub fn reported(&mut self, delta: i64) {
        self.reported += delta;
    }

    /// What to give back when the index is dropped.
    pub fn release(&mut self) -> i64 {
        -std::mem::take(&mut self.reported)
    }
}

/// What a standalone index and a local indexer (which also buffers what it applies) share: the
/// whole query and apply surface of the raw interface, over whichever index they hold.
pub trait IndexAccess {
    fn index(&self) -> &RadixIndex;
    fn index_mut(&mut self) -> &mut RadixIndex;
    /// Applies one event given by parts.
    fn apply_parts(
        &mut self,
        worker_id: u64,
        event_id: u64,
        dp_rank: u32,
        data: DataRef,
    ) -> ApplyOutcome;

    fn apply_router_event(&mut self, ev: &RouterEvent) -> ApplyOutcome {
        self.apply_parts(ev.worker_id, ev.event_id, ev.dp_rank, ev.data.as_data_ref())
    }

    /// A stored event given as parallel arrays (the shape the TypeScript layer flattens events
    /// into); `mm` is per block, shorter or absent meaning none.
    #[allow(clippy::too_many_arguments)]
    fn apply_stored(
        &mut self,
        worker_id: u64,
        event_id: u64,
        dp_rank: u32,
        parent_hash: Option<u64>,
        block_hashes: &[u64],
        tokens_hashes: &[u64],
        mm: Option<Vec<Option<BlockExtraInfo>>>,
    ) -> ApplyOutcome {
        let mut mm = mm.unwrap_or_default().into_iter();
        let blocks: Vec<StoredBlock> = block_hashes
            .iter()
            .zip(tokens_hashes)
            .map(|(&block_hash, &tokens_hash)| StoredBlock {
                block_hash,
                tokens_hash,
                mm_extra_info: mm.next().flatten(),
            })
            .collect();
        self.apply_parts(
            worker_id,
            event_id,
            dp_rank,
            DataRef::Stored {
                parent_hash,
                blocks: &blocks,
            },
        )
    }

    /// An event as it travels; `format` indexes ENCODED_FORMATS.
    fn apply_encoded(&mut self, payload: &[u8], format: u32) -> Result<ApplyOutcome, WireError> {
        let events = decode_router_events_encoded(payload, format)?;
        let mut first_problem = None;
        let mut applied = false;
        for (ev, meta) in &events {
            match self.apply_with_meta(ev, *meta) {
                ApplyOutcome::Applied => applied = true,
                ApplyOutcome::Ignored => {}
                o => {
                    applied = true;
                    first_problem.get_or_insert(o);
                }
            }
        }
        Ok(first_problem.unwrap_or(if applied {
            ApplyOutcome::Applied
        } else {
            ApplyOutcome::Ignored
        }))
    }

    /// SPEC 6 for a decoded event with its Dynamo 1.4+ fields: an event for another storage tier
    /// than the device, or for the cache-owner domain, is `Ignored` (the index holds the worker's
    /// GPU blocks); a `cleared` naming its residency domain clears only its dp rank.
    fn apply_with_meta(&mut self, ev: &RouterEvent, meta: EventMeta) -> ApplyOutcome {
        if !meta.targets_gpu_index() {
            return ApplyOutcome::Ignored;
        }
        if matches!(ev.data, EventData::Cleared) && meta.rank_scoped() {
            return self.clear_rank_parts(ev.worker_id, ev.event_id, ev.dp_rank);
        }
        self.apply_router_event(ev)
    }

    /// A Dynamo 1.4+ `cleared` of one dp rank.
    fn clear_rank_parts(&mut self, worker_id: u64, event_id: u64, dp_rank: u32) -> ApplyOutcome;

    /// `find_matches` written with `write_matches`.
    fn find_matches_into(
        &mut self,
        tokens_hashes: &[u64],
        early_exit: bool,
        out: &mut [u8],
    ) -> i64 {
        write_matches(
            self.index_mut().find_matches_ref(tokens_hashes, early_exit),
            out,
        )
    }

    /// `find_matches_into` on the block hashes of `tokens` under `opts` (SPEC 4), or None when
    /// `kv_block_size` is 0.
    fn find_matches_for_tokens_into(
        &mut self,
        tokens: &[u32],
        kv_block_size: u32,
        opts: &BlockHashOptions,
        early_exit: bool,
        out: &mut [u8],
    ) -> Option<i64> {
        if kv_block_size == 0 {
            return None;
        }
        let hashes = compute_block_hashes_with(tokens, kv_block_size as usize, opts);
        Some(self.find_matches_into(&hashes, early_exit, out))
    }
}

impl IndexAccess for RadixIndex {
    fn index(&self) -> &RadixIndex {
        self
    }
    fn index_mut(&mut self) -> &mut RadixIndex {
        self
    }
    fn apply_parts(
        &mut self,
        worker_id: u64,
        event_id: u64,
        dp_rank: u32,
        data: DataRef,
    ) -> ApplyOutcome {
        self.apply(worker_id, event_id, dp_rank, data)
    }
    fn clear_rank_parts(&mut self, worker_id: u64, event_id: u64, dp_rank: u32) -> ApplyOutcome {
        self.clear_rank(worker_id, event_id, dp_rank)
    }
}

/// Counter indices (the same order as INDEX_COUNTER_NAMES in ts/core/binding.ts).
pub const INDEX_COUNTER_NAMES: [&str; 8] = [
    "applied_stored",
    "applied_removed",
    "applied_cleared",
    "parent_not_found",
    "block_not_found",
    "invalid_block_sequence",
    "blocks_stored",
    "blocks_removed",
];
const C_STORED: usize = 0;
const C_REMOVED: usize = 1;
const C_CLEARED: usize = 2;
const C_PARENT_NOT_FOUND: usize = 3;
const C_BLOCK_NOT_FOUND: usize = 4;
const C_INVALID_SEQUENCE: usize = 5;
const C_BLOCKS_STORED: usize = 6;
const C_BLOCKS_REMOVED: usize = 7;

/// A (worker slot, block hash) pair held on a node.
#[derive(Debug, Clone, Copy)]
struct Holder {
    block_hash: u64,
    worker: u32,
}

#[derive(Debug, Clone)]
struct Node {
    /// The tokens hash of the edge from the parent.
    key: u64,
    /// When `worker` is a slot: the block hash of the only holder, which is the node's own hash
    /// (the hash its plain holders hold). When SPILLED: the bitmask of the worker slots below LOW
    /// that hold the node, so that a query reads no HolderSet (the node's hash is the set's).
    hash: u64,
    /// NIL for the root, for a detached node, and for a free slot.
    parent: u32,
    /// NIL (no child), a child id, or MANY | index into `kid_lists`.
    kids: u32,
    /// NOBODY, SPILLED | index into `sets`, or the slot of the only holder.
    worker: u32,
    /// The position in the parent's kid list, when the parent has several children.
    pos: u32,
}

const EMPTY_NODE: Node = Node {
    key: 0,
    hash: 0,
    parent: NIL,
    kids: NIL,
    worker: NOBODY,
    pos: NIL,
};
const _: () = assert!(std::mem::size_of::<Node>() == 32);

/// A worker's table entry with this bit set is an index into `RadixIndex::aliases` (a hash the
/// worker holds on a node as one of its set's `others`); without it, a node id on which the worker
/// is a plain holder of the node's own hash.
const ALIAS: u32 = 1 << 31;

/// A holder whose block hash is not the node's own, or that came while its worker already had
/// such a hash on the node (so that each worker's hashes on a node keep their order: its plain
/// holding first, then its others in insertion order).
#[derive(Debug, Clone, Copy)]
struct Other {
    hash: u64,
    worker: u32,
    /// Its entry in `RadixIndex::aliases` (what the worker's table points to).
    alias: u32,
}

/// What a worker's table entry ALIAS | i resolves to: the block hash and the node holding it.
#[derive(Debug, Clone, Copy)]
struct Alias {
    hash: u64,
    node: u32,
}

/// The holders of a node with more than one, or with one that is not a plain holder. The node's
/// `hash` field holds the bitmask of the worker slots below LOW here.
#[derive(Debug, Default)]
struct HolderSet {
    /// The node's own block hash: what each `plain` worker holds here.
    hash: u64,
    /// The wrapping sum of `worker_mix` of the distinct worker slots >= LOW here: a query compares
    /// it with its active high slots' sum to skip a level without reading the holders.
    high_sum: u64,
    /// Worker slots below LOW holding `hash` (bit i: slot i): a set of a few holders allocates
    /// nothing more.
    plain_low: u64,
    /// Worker slots from LOW up holding `hash`, ascending (each at most once); only with more than
    /// 64 worker keys.
    #[allow(clippy::box_collection)]
    plain_high: Option<Box<Vec<u32>>>,
    /// The other holders in insertion order; rare where engines share one hash per token path.
    /// Boxed: 8 bytes in every set instead of a `Vec`'s 24.
    #[allow(clippy::box_collection)]
    others: Option<Box<Vec<Other>>>,
    /// Distinct worker slots >= LOW here.
    high: u32,
}

const _: () = assert!(std::mem::size_of::<HolderSet>() == 48);

impl HolderSet {
    /// Whether the worker holds anything here; `low` is the node's mask.
    fn has_worker(&self, worker: u32, low: u64) -> bool {
        if worker < LOW {
            low >> worker & 1 != 0
        } else {
            self.holds_any(worker)
        }
    }

    /// Same, without the mask (to update it).
    fn holds_any(&self, worker: u32) -> bool {
        self.holds_plain(worker) || self.has_other_of(worker)
    }

    fn holds_plain(&self, worker: u32) -> bool {
        if worker < LOW {
            self.plain_low >> worker & 1 != 0
        } else {
            self.plain_high
                .as_ref()
                .is_some_and(|p| p.binary_search(&worker).is_ok())
        }
    }

    fn add_plain(&mut self, worker: u32) {
        if worker < LOW {
            self.plain_low |= 1 << worker;
        } else {
            let p = self.plain_high.get_or_insert_with(Default::default);
            if let Err(i) = p.binary_search(&worker) {
                p.insert(i, worker);
            }
        }
    }

    fn remove_plain(&mut self, worker: u32) {
        if worker < LOW {
            self.plain_low &= !(1 << worker);
        } else if let Some(p) = self.plain_high.as_mut() {
            if let Ok(i) = p.binary_search(&worker) {
                p.remove(i);
            }
            if p.is_empty() {
                self.plain_high = None;
            }
        }
    }

    fn plain_len(&self) -> usize {
        self.plain_low.count_ones() as usize + self.plain_high.as_ref().map_or(0, |p| p.len())
    }

    /// The plain holders, ascending.
    fn plain(&self) -> impl Iterator<Item = u32> + '_ {
        let mut low = self.plain_low;
        std::iter::from_fn(move || {
            (low != 0).then(|| {
                let w = low.trailing_zeros();
                low &= low - 1;
                w
            })
        })
        .chain(self.plain_high.iter().flat_map(|p| p.iter().copied()))
    }

    fn has_other_of(&self, worker: u32) -> bool {
        self.others
            .as_ref()
            .is_some_and(|o| o.iter().any(|x| x.worker == worker))
    }

    fn live(&self) -> usize {
        self.plain_len() + self.others.as_ref().map_or(0, |o| o.len())
    }

    /// Accounts for a worker that just arrived on, or left, this node (`low`: the node's mask).
    fn count(&mut self, worker: u32, arrived: bool, low: &mut u64) {
        if worker < LOW {
            if arrived {
                *low |= 1 << worker;
            } else {
                *low &= !(1 << worker);
            }
        } else if arrived {
            self.high += 1;
            self.high_sum = self.high_sum.wrapping_add(worker_mix(worker));
        } else {
            self.high -= 1;
            self.high_sum = self.high_sum.wrapping_sub(worker_mix(worker));
        }
    }
}

/// A well-mixed 64-bit image of a worker slot (splitmix64): sums of these tell distinct worker sets
/// apart except with probability ~2^-64.
#[inline]
fn worker_mix(slot: u32) -> u64 {
    let mut z = (slot as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Debug)]
struct Worker {
    worker_id: u64,
    dp_rank: u32,
    /// block hash → entry: a node id (a plain holding: the node's own hash) or ALIAS | alias.
    blocks: HashTable,
    last_event_id: Option<u64>,
}

/// One match: a worker key, its matched prefix length in blocks, and how many hashes it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    pub worker_id: u64,
    pub dp_rank: u32,
    pub score: u32,
    pub tree_size: u64,
}

/// The per-query working memory of `find_matches`, owned by the caller so that an index can be
/// queried through `&self` (`RadixIndex::find_matches_with`), from several threads each with its own
/// scratch. One scratch serves any number of indexes; it grows to the largest worker-slot count seen
/// and allocates nothing per query after that.
#[derive(Debug, Default, Clone)]
pub struct MatchScratch {
    stamp: Vec<u32>,
    generation: u32,
    /// per slot, its score in the current query (0 = none; every entry is 0 between queries)
    score: Vec<u32>,
    scored: Vec<u32>,
    high: Vec<u32>,
    kept: Vec<u32>,
    keys: Vec<u64>,
    /// the slot order, for an index whose own is stale (`RadixIndex::prepare_reads` not called
    /// since a worker came or went)
    order: Vec<u32>,
    rank: Vec<u32>,
    out: Vec<Match>,
}

impl MatchScratch {
    pub fn new() -> Self {
        Self::default()
    }

    /// The answer of the last query made with this scratch.
    pub fn matches(&self) -> &[Match] {
        &self.out
    }

    fn next_generation(&mut self) -> u32 {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            // the stamps wrapped: forget them all once
            self.stamp.iter_mut().for_each(|s| *s = 0);
            self.generation = 1;
        }
        self.generation
    }
}

#[derive(Debug)]
pub struct RadixIndex {
    nodes: Arena<Node>,
    free_nodes: Vec<u32>,
    sets: Arena<HolderSet>,
    free_sets: Vec<u32>,
    aliases: Vec<Alias>,
    free_aliases: Vec<u32>,
    /// Keys the workers' tables (per index, so that crafted hashes cannot choose collisions).
    seed: u64,
    edges: EdgeTable,
    /// Bit n set: node n has several children (its edges are in `edges`). Dense and small (a bit
    /// per node), so that a query can tell, before it reads a node, that the next step will look
    /// up `edges`, and start loading that slot alongside the node.
    branching: Vec<u64>,
    kid_lists: Vec<Vec<u32>>,
    free_lists: Vec<u32>,
    /// Worker slots; a forgotten worker's slot is None until reused.
    workers: Vec<Option<Worker>>,
    free_workers: Vec<u32>,
    worker_index: HashMap<(u64, u32), u32>,
    counters: [u64; INDEX_COUNTER_NAMES.len()],
    /// Live worker slots in ascending (worker_id, dp_rank) and each slot's position there, rebuilt
    /// by `prepare_reads` (the first `&mut` query after a worker came or went): results come out in
    /// that order unsorted.
    order: Vec<u32>,
    rank: Vec<u32>,
    order_stale: bool,
    /// The scratch of the `&mut self` queries.
    scratch: MatchScratch,
    /// Changes with every mutation, distinct between indexes (a dump cursor's staleness check).
    version: u64,
}

impl Default for RadixIndex {
    fn default() -> Self {
        Self::new()
    }
}

const ROOT: u32 = 0;

impl RadixIndex {
    pub fn new() -> Self {
        let mut nodes = Arena::default();
        nodes.push(EMPTY_NODE);
        RadixIndex {
            nodes,
            free_nodes: Vec::new(),
            sets: Arena::default(),
            free_sets: Vec::new(),
            aliases: Vec::new(),
            free_aliases: Vec::new(),
            seed: MixState::default().0,
            edges: EdgeTable::new(),
            branching: Vec::new(),
            kid_lists: Vec::new(),
            free_lists: Vec::new(),
            workers: Vec::new(),
            free_workers: Vec::new(),
            worker_index: HashMap::new(),
            counters: [0; INDEX_COUNTER_NAMES.len()],
            order: Vec::new(),
            rank: Vec::new(),
            order_stale: false,
            scratch: MatchScratch::default(),
            version: next_version_base(),
        }
    }

    pub fn counters(&self) -> &[u64; INDEX_COUNTER_NAMES.len()] {
        &self.counters
    }

    /// Total (worker key, block hash) entries.
    pub fn size(&self) -> u64 {
        self.workers
            .iter()
            .flatten()
            .map(|w| w.blocks.len() as u64)
            .sum()
    }

    /// Distinct known worker ids, ascending.
    pub fn workers(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.workers.iter().flatten().map(|w| w.worker_id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Whether this worker key is known.
    pub fn knows(&self, worker_id: u64, dp_rank: u32) -> bool {
        self.worker_index.contains_key(&(worker_id, dp_rank))
    }

    // --------------------------------------------------------------------------------------------
    // tree primitives

    #[inline]
    fn child(&self, node: u32, key: u64) -> Option<u32> {
        let kids = self.nodes[node as usize].kids;
        if kids == NIL {
            None
        } else if kids & MANY != 0 {
            self.edges.get(node, key)
        } else if self.nodes[kids as usize].key == key {
            Some(kids)
        } else {
            None
        }
    }

    #[inline]
    fn is_branching(&self, node: u32) -> bool {
        self.branching
            .get(node as usize / 64)
            .is_some_and(|w| w >> (node % 64) & 1 != 0)
    }

    /// When `node` has several children, starts loading the edge slot where the query's `next` hash
    /// is looked up, alongside the node itself (the next step's first miss).
    #[inline]
    fn prefetch_next_edge(&self, node: u32, next: Option<&u64>) {
        if let Some(&next) = next {
            if self.is_branching(node) {
                self.edges.prefetch(node, next);
            }
        }
    }

    fn set_branching(&mut self, node: u32, on: bool) {
        let i = node as usize / 64;
        if i >= self.branching.len() {
            if !on {
                return;
            }
            self.branching.resize(i + 1, 0);
        }
        if on {
            self.branching[i] |= 1 << (node % 64);
        } else {
            self.branching[i] &= !(1 << (node % 64));
        }
    }

    fn alloc_node(&mut self, key: u64, parent: u32) -> u32 {
        let node = Node {
            key,
            parent,
            ..EMPTY_NODE
        };
        match self.free_nodes.pop() {
            Some(id) => {
                self.nodes[id as usize] = node;
                id
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        }
    }

    fn add_kid(&mut self, parent: u32, key: u64, child: u32) {
        let kids = self.nodes[parent as usize].kids;
        if kids == NIL {
            self.nodes[parent as usize].kids = child;
            return;
        }
        let list = if kids & MANY != 0 {
            kids & !MANY
        } else {
            // a second child: both edges go to the table and a list
            let list = match self.free_lists.pop() {
                Some(l) => l,
                None => {
                    self.kid_lists.push(Vec::new());
                    (self.kid_lists.len() - 1) as u32
                }
            };
            self.edges
                .insert(parent, self.nodes[kids as usize].key, kids);
            self.nodes[kids as usize].pos = 0;
            self.kid_lists[list as usize].push(kids);
            self.nodes[parent as usize].kids = MANY | list;
            self.set_branching(parent, true);
            list
        };
        self.edges.insert(parent, key, child);
        let l = &mut self.kid_lists[list as usize];
        self.nodes[child as usize].pos = l.len() as u32;
        l.push(child);
    }

    /// Unlinks `child` (whose parent is `parent`) from its parent.
    fn remove_kid(&mut self, parent: u32, child: u32) {
        let kids = self.nodes[parent as usize].kids;
        if kids == NIL {
            return;
        }
        if kids & MANY == 0 {
            if kids == child {
                self.nodes[parent as usize].kids = NIL;
            }
            return;
        }
        let list = (kids & !MANY) as usize;
        let key = self.nodes[child as usize].key;
        if self.edges.remove(parent, key) != Some(child) {
            return;
        }
        let l = &mut self.kid_lists[list];
        let pos = self.nodes[child as usize].pos as usize;
        if l.get(pos) != Some(&child) {
            return;
        }
        l.swap_remove(pos);
        if let Some(&moved) = l.get(pos) {
            self.nodes[moved as usize].pos = pos as u32;
        }
        if l.len() == 1 {
            // back to one inline child
            let only = l[0];
            self.edges.remove(parent, self.nodes[only as usize].key);
            self.free_list(list as u32);
            self.nodes[only as usize].pos = NIL;
            self.nodes[parent as usize].kids = only;
            self.set_branching(parent, false);
        }
    }

    fn free_list(&mut self, list: u32) {
        let l = &mut self.kid_lists[list as usize];
        l.clear();
        if l.capacity() > 64 {
            *l = Vec::new();
        }
        self.free_lists.push(list);
    }

    /// The child ids of a node (any order).
    fn kid_ids(&self, node: u32) -> Vec<u32> {
        let kids = self.nodes[node as usize].kids;
        if kids == NIL {
            Vec::new()
        } else if kids & MANY != 0 {
            self.kid_lists[(kids & !MANY) as usize].clone()
        } else {
            vec![kids]
        }
    }

    /// A non-root node lost its last holder: it leaves its parent and its children are detached;
    /// detached children without holders go the same way.
    fn drop_empty(&mut self, start: u32) {
        let mut stack = vec![start];
        while let Some(n) = stack.pop() {
            if n == ROOT {
                continue;
            }
            let parent = self.nodes[n as usize].parent;
            if parent != NIL {
                self.remove_kid(parent, n);
            }
            let kids = self.nodes[n as usize].kids;
            for c in self.kid_ids(n) {
                if kids & MANY != 0 {
                    self.edges.remove(n, self.nodes[c as usize].key);
                }
                let child = &mut self.nodes[c as usize];
                (child.parent, child.pos) = (NIL, NIL);
                if child.worker == NOBODY {
                    stack.push(c);
                }
            }
            if kids != NIL && kids & MANY != 0 {
                self.free_list(kids & !MANY);
                self.set_branching(n, false);
            }
            let w = self.nodes[n as usize].worker;
            if w != NOBODY && w & SPILLED != 0 {
                self.free_set(w & !SPILLED);
            }
            self.nodes[n as usize] = EMPTY_NODE;
            self.free_nodes.push(n);
        }
    }

    fn free_set(&mut self, set: u32) {
        let s = &mut self.sets[set as usize];
        (s.hash, s.high, s.high_sum, s.plain_low) = (0, 0, 0, 0);
        (s.plain_high, s.others) = (None, None);
        self.free_sets.push(set);
    }

    fn alloc_set(&mut self) -> u32 {
        match self.free_sets.pop() {
            Some(s) => s,
            None => {
                self.sets.push(HolderSet::default());
                (self.sets.len() - 1) as u32
            }
        }
    }

    /// The holders of a node: its plain holders, then the others in insertion order (so each
    /// worker's hashes there come in the order it stored them).
    fn holders(&self, node: u32) -> impl Iterator<Item = Holder> + '_ {
        holders_of(&self.nodes[node as usize], &self.sets)
    }

    fn has_worker(&self, node: u32, worker: u32) -> bool {
        let n = &self.nodes[node as usize];
        match n.worker {
            NOBODY => false,
            w if w & SPILLED != 0 => self.sets[(w & !SPILLED) as usize].has_worker(worker, n.hash),
            w => w == worker,
        }
    }

    /// The node of a worker's table entry.
    #[inline]
    fn entry_node(&self, entry: u32) -> u32 {
        if entry & ALIAS != 0 {
            self.aliases[(entry & !ALIAS) as usize].node
        } else {
            entry
        }
    }

    /// Where the worker holds `block_hash`: (position in its table, entry).
    #[inline]
    fn find_entry(&self, slot: u32, block_hash: u64) -> Option<(usize, u32)> {
        let r = Resolver {
            nodes: &self.nodes,
            sets: &self.sets,
            aliases: &self.aliases,
        };
        self.workers[slot as usize]
            .as_ref()
            .expect("live worker slot")
            .blocks
            .find(block_hash, self.seed, &r)
    }

    /// Starts loading where the worker's table keeps these hashes (the first few of them).
    #[inline]
    fn prefetch_entries(&self, slot: u32, hashes: impl Iterator<Item = u64>) {
        if let Some(w) = self.workers[slot as usize].as_ref() {
            for h in hashes.take(PREFETCH_BLOCKS) {
                w.blocks.prefetch(h, self.seed);
            }
        }
    }

    /// `find_entry`, or the slot of the worker's table where the hash goes.
    #[inline]
    fn find_or_vacant(&mut self, slot: u32, block_hash: u64) -> Result<(usize, u32), usize> {
        let r = Resolver {
            nodes: &self.nodes,
            sets: &self.sets,
            aliases: &self.aliases,
        };
        self.workers[slot as usize]
            .as_mut()
            .expect("live worker slot")
            .blocks
            .find_or_vacant(block_hash, self.seed, &r)
    }

    /// Puts (worker, block_hash) on `node`, where the worker does not hold that hash: the entry
    /// for the worker's table.
    fn hold(&mut self, node: u32, worker: u32, block_hash: u64) -> u32 {
        let n = &self.nodes[node as usize];
        let set = match n.worker {
            NOBODY => {
                let n = &mut self.nodes[node as usize];
                (n.worker, n.hash) = (worker, block_hash);
                return node;
            }
            w if w & SPILLED != 0 => w & !SPILLED,
            w => {
                // a second holder: the first becomes a plain holder of the set
                let own = n.hash;
                let set = self.alloc_set();
                let s = &mut self.sets[set as usize];
                s.hash = own;
                s.add_plain(w);
                let mut low = 0;
                s.count(w, true, &mut low);
                let n = &mut self.nodes[node as usize];
                (n.worker, n.hash) = (SPILLED | set, low);
                set
            }
        };
        let n = &mut self.nodes[node as usize];
        let s = &mut self.sets[set as usize];
        let mut low = n.hash;
        let arrived = !s.has_worker(worker, low);
        let entry = if block_hash == s.hash && !s.has_other_of(worker) {
            s.add_plain(worker);
            node
        } else {
            let alias = Alias {
                hash: block_hash,
                node,
            };
            let a = match self.free_aliases.pop() {
                Some(a) => {
                    self.aliases[a as usize] = alias;
                    a
                }
                None => {
                    self.aliases.push(alias);
                    (self.aliases.len() - 1) as u32
                }
            };
            s.others.get_or_insert_with(Default::default).push(Other {
                hash: block_hash,
                worker,
                alias: a,
            });
            ALIAS | a
        };
        if arrived {
            s.count(worker, true, &mut low);
        }
        n.hash = low;
        entry
    }

    /// Removes the worker's holding `entry` (its table entry) from `node`, dropping the node when
    /// it is left empty.
    fn leave(&mut self, node: u32, worker: u32, entry: u32) {
        let n = &mut self.nodes[node as usize];
        match n.worker {
            NOBODY => {}
            w if w & SPILLED != 0 => {
                let set = w & !SPILLED;
                let s = &mut self.sets[set as usize];
                if entry & ALIAS != 0 {
                    let a = entry & !ALIAS;
                    if let Some(o) = s.others.as_mut() {
                        if let Some(i) = o.iter().position(|x| x.alias == a) {
                            o.remove(i);
                            self.free_aliases.push(a);
                        }
                        if o.is_empty() {
                            s.others = None;
                        }
                    }
                } else {
                    s.remove_plain(worker);
                }
                let mut low = n.hash;
                if !s.holds_any(worker) {
                    s.count(worker, false, &mut low);
                }
                n.hash = low;
                // back inline when one plain holder is left; empty when none
                let last = match (s.live(), s.others.is_none()) {
                    (0, _) => Some((NOBODY, 0)),
                    (1, true) => s.plain().next().map(|w| (w, s.hash)),
                    _ => None,
                };
                if let Some((w, h)) = last {
                    (n.worker, n.hash) = (w, h);
                    self.free_set(set);
                }
            }
            w => {
                if w == worker && entry == node {
                    n.worker = NOBODY;
                }
            }
        }
        if self.nodes[node as usize].worker == NOBODY {
            self.drop_empty(node);
        }
    }

    // --------------------------------------------------------------------------------------------
    // workers

    fn worker_slot(&mut self, worker_id: u64, dp_rank: u32) -> u32 {
        if let Some(&w) = self.worker_index.get(&(worker_id, dp_rank)) {
            return w;
        }
        let worker = Worker {
            worker_id,
            dp_rank,
            blocks: HashTable::default(),
            last_event_id: None,
        };
        let slot = match self.free_workers.pop() {
            Some(s) => {
                self.workers[s as usize] = Some(worker);
                s
            }
            None => {
                self.workers.push(Some(worker));
                (self.workers.len() - 1) as u32
            }
        };
        self.worker_index.insert((worker_id, dp_rank), slot);
        self.order_stale = true;
        slot
    }

    fn worker(&mut self, slot: u32) -> &mut Worker {
        self.workers[slot as usize]
            .as_mut()
            .expect("live worker slot")
    }

    /// Drops every block of a worker slot (it stays known).
    fn clear_slot(&mut self, slot: u32) {
        let blocks = std::mem::take(&mut self.worker(slot).blocks);
        for e in blocks.entries() {
            self.leave(self.entry_node(e), slot, e);
        }
    }

    fn slots_of(&self, worker_id: u64) -> Vec<u32> {
        self.workers
            .iter()
            .enumerate()
            .filter(|(_, w)| w.as_ref().is_some_and(|w| w.worker_id == worker_id))
            .map(|(i, _)| i as u32)
            .collect()
    }

    fn forget_slot(&mut self, slot: u32) {
        self.clear_slot(slot);
        if let Some(w) = self.workers[slot as usize].take() {
            self.worker_index.remove(&(w.worker_id, w.dp_rank));
            self.free_workers.push(slot);
            self.order_stale = true;
        }
    }

    /// Drops every block of every dp rank of the worker and forgets it.
    pub fn remove_worker(&mut self, worker_id: u64) {
        self.version += 1;
        for slot in self.slots_of(worker_id) {
            self.forget_slot(slot);
        }
    }

    pub fn remove_worker_dp_rank(&mut self, worker_id: u64, dp_rank: u32) {
        self.version += 1;
        if let Some(&slot) = self.worker_index.get(&(worker_id, dp_rank)) {
            self.forget_slot(slot);
        }
    }

    // --------------------------------------------------------------------------------------------
    // events

    pub fn apply_event(&mut self, ev: &RouterEvent) -> ApplyOutcome {
        self.apply(ev.worker_id, ev.event_id, ev.dp_rank, ev.data.as_data_ref())
    }

    /// A Dynamo 1.4+ `cleared`: only `dp_rank` of the worker loses its blocks.
    pub fn clear_rank(&mut self, worker_id: u64, event_id: u64, dp_rank: u32) -> ApplyOutcome {
        self.version += 1;
        let slot = self.worker_slot(worker_id, dp_rank);
        self.worker(slot).last_event_id = Some(event_id);
        self.clear_slot(slot);
        self.counters[C_CLEARED] += 1;
        ApplyOutcome::Applied
    }

    /// Applies one event given by parts (the ingest path applies its chunks without copying them).
    pub fn apply(
        &mut self,
        worker_id: u64,
        event_id: u64,
        dp_rank: u32,
        data: DataRef,
    ) -> ApplyOutcome {
        self.version += 1;
        let slot = self.worker_slot(worker_id, dp_rank);
        self.worker(slot).last_event_id = Some(event_id);
        match data {
            DataRef::Stored {
                parent_hash,
                blocks,
            } => self.store(slot, parent_hash, blocks),
            DataRef::Removed(hashes) => self.remove(slot, hashes),
            DataRef::Cleared => {
                for s in self.slots_of(worker_id) {
                    self.clear_slot(s);
                }
                self.counters[C_CLEARED] += 1;
                ApplyOutcome::Applied
            }
        }
    }

    fn store(
        &mut self,
        slot: u32,
        parent_hash: Option<u64>,
        blocks: &[StoredBlock],
    ) -> ApplyOutcome {
        // the parent's table group first: its lookup is what the walk below waits on first
        if let Some(p) = parent_hash {
            self.prefetch_entries(slot, std::iter::once(p));
        }
        if repeats(blocks, parent_hash) {
            self.counters[C_INVALID_SEQUENCE] += 1;
            return ApplyOutcome::InvalidBlockSequence;
        }
        // the blocks' table groups, loaded while the walk below waits on the tree
        self.prefetch_entries(slot, blocks.iter().map(|b| b.block_hash));
        let mut current = match parent_hash {
            None => ROOT,
            Some(p) => match self.find_entry(slot, p) {
                Some((_, e)) => self.entry_node(e),
                None => {
                    self.counters[C_PARENT_NOT_FOUND] += 1;
                    return ApplyOutcome::ParentNotFound;
                }
            },
        };
        for b in blocks {
            let child = match self.child(current, b.tokens_hash) {
                Some(c) => c,
                None => {
                    let c = self.alloc_node(b.tokens_hash, current);
                    self.add_kid(current, b.tokens_hash, c);
                    c
                }
            };
            match self.find_or_vacant(slot, b.block_hash) {
                Ok((_, e)) if self.entry_node(e) == child => {}
                Ok((pos, e)) => {
                    // the hash moved: it leaves its old node. The child holds it first, and `old`
                    // is neither `current` left empty (current holds this worker's previous hash,
                    // or is the root) nor the child's parent, so `child` stays valid.
                    let old = self.entry_node(e);
                    let entry = self.hold(child, slot, b.block_hash);
                    self.worker(slot).blocks.set(pos, entry);
                    self.leave(old, slot, e);
                }
                Err(pos) => {
                    let entry = self.hold(child, slot, b.block_hash);
                    let seed = self.seed;
                    self.worker(slot)
                        .blocks
                        .insert_at(pos, b.block_hash, entry, seed);
                }
            }
            current = child;
        }
        self.counters[C_STORED] += 1;
        self.counters[C_BLOCKS_STORED] += blocks.len() as u64;
        ApplyOutcome::Applied
    }

    fn remove(&mut self, slot: u32, hashes: &[u64]) -> ApplyOutcome {
        self.prefetch_entries(slot, hashes.iter().copied());
        let mut missing = 0u64;
        for &h in hashes {
            match self.find_entry(slot, h) {
                Some((pos, e)) => {
                    self.worker(slot).blocks.erase(pos);
                    self.leave(self.entry_node(e), slot, e);
                    self.counters[C_BLOCKS_REMOVED] += 1;
                }
                None => missing += 1,
            }
        }
        self.counters[C_REMOVED] += 1;
        self.counters[C_BLOCK_NOT_FOUND] += missing;
        if missing > 0 {
            ApplyOutcome::BlockNotFound
        } else {
            ApplyOutcome::Applied
        }
    }

    // --------------------------------------------------------------------------------------------
    // queries

    /// SPEC 6 find_matches: per worker key, the number of leading blocks of `query` it holds along
    /// the path from the root. Ascending (worker_id, dp_rank); zero scores omitted.
    pub fn find_matches(&mut self, query: &[u64], early_exit: bool) -> Vec<Match> {
        self.find_matches_ref(query, early_exit).to_vec()
    }

    /// `find_matches` into a buffer the index reuses (no allocation per query).
    pub fn find_matches_ref(&mut self, query: &[u64], early_exit: bool) -> &[Match] {
        self.prepare_reads();
        let mut scratch = std::mem::take(&mut self.scratch);
        self.find_matches_with(query, early_exit, &mut scratch);
        self.scratch = scratch;
        &self.scratch.out
    }

    /// `find_matches` through `&self`, into `scratch` (the answer is `scratch`'s until its next
    /// query). The same answer as `find_matches`; after a worker came or went it costs a sort of the
    /// worker keys per query until `prepare_reads` is called.
    pub fn find_matches_with<'s>(
        &self,
        query: &[u64],
        early_exit: bool,
        scratch: &'s mut MatchScratch,
    ) -> &'s [Match] {
        let mut out = std::mem::take(&mut scratch.out);
        out.clear();
        self.walk(query, early_exit, scratch, &mut out);
        scratch.out = out;
        &scratch.out
    }

    /// Brings the worker-key order that queries emit in up to date (a sort of the worker keys when
    /// a worker came or went since the last call, else nothing), so that `find_matches_with` on
    /// `&self` does not sort per query.
    pub fn prepare_reads(&mut self) {
        if self.order_stale {
            self.order_stale = false;
            let (mut order, mut rank) = (
                std::mem::take(&mut self.order),
                std::mem::take(&mut self.rank),
            );
            self.compute_order(&mut order, &mut rank);
            (self.order, self.rank) = (order, rank);
        }
    }

    /// Live worker slots in ascending (worker_id, dp_rank) into `order`, and each one's position
    /// there into `rank`.
    fn compute_order(&self, order: &mut Vec<u32>, rank: &mut Vec<u32>) {
        order.clear();
        order.extend(
            self.workers
                .iter()
                .enumerate()
                .filter(|(_, w)| w.is_some())
                .map(|(i, _)| i as u32),
        );
        let workers = &self.workers;
        let key = |s: &u32| {
            workers[*s as usize]
                .as_ref()
                .map(|w| (w.worker_id, w.dp_rank))
        };
        order.sort_unstable_by_key(key);
        rank.resize(self.workers.len(), 0);
        for (i, &s) in order.iter().enumerate() {
            rank[s as usize] = i as u32;
        }
    }

    fn walk(&self, query: &[u64], early_exit: bool, s: &mut MatchScratch, out: &mut Vec<Match>) {
        let Some(&first) = query.first() else {
            return;
        };
        let Some(mut node) = self.child(ROOT, first) else {
            return;
        };
        self.prefetch_next_edge(node, query.get(1));
        let n_slots = self.workers.len();
        if s.stamp.len() < n_slots {
            s.stamp.resize(n_slots, 0);
            s.score.resize(n_slots, 0);
        }
        // The active set: slots < LOW as a bitmask, the others (rare: more than 64 worker keys) as a
        // list with the sum of their mixes.
        let mut high = std::mem::take(&mut s.high);
        let mut kept = std::mem::take(&mut s.kept);
        let mut scored = std::mem::take(&mut s.scored);
        high.clear();
        scored.clear();
        let (mut low, mut high_sum) = (0u64, 0u64);
        match self.nodes[node as usize].worker {
            NOBODY => {}
            w if w & SPILLED != 0 => {
                let set = (w & !SPILLED) as usize;
                (low, high_sum) = (self.nodes[node as usize].hash, self.sets[set].high_sum);
                if self.sets[set].high > 0 {
                    let g = s.next_generation();
                    for w in workers_of(&self.nodes[node as usize], &self.sets) {
                        if w >= LOW && s.stamp[w as usize] != g {
                            s.stamp[w as usize] = g;
                            high.push(w);
                        }
                    }
                }
            }
            w if w < LOW => low = 1 << w,
            w => {
                high.push(w);
                high_sum = worker_mix(w);
            }
        }
        let mut depth = 1u32;
        for (i, &q) in query.iter().enumerate().skip(1) {
            if early_exit && low.count_ones() as usize + high.len() == 1 {
                break;
            }
            let Some(child) = self.child(node, q) else {
                break;
            };
            self.prefetch_next_edge(child, query.get(i + 1));
            let c = &self.nodes[child as usize];
            let c_worker = c.worker;
            let c_low = match c_worker {
                NOBODY => 0,
                w if w & SPILLED != 0 => c.hash,
                w if w < LOW => 1 << w,
                _ => 0,
            };
            let mut lost = low & !c_low;
            low &= c_low;
            while lost != 0 {
                let w = lost.trailing_zeros();
                lost &= lost - 1;
                s.score[w as usize] = depth;
                scored.push(w);
            }
            if !high.is_empty() {
                let same = c_worker != NOBODY
                    && c_worker & SPILLED != 0
                    && self.sets[(c_worker & !SPILLED) as usize].high_sum == high_sum;
                if !same {
                    let g = s.next_generation();
                    for w in workers_of(&self.nodes[child as usize], &self.sets) {
                        s.stamp[w as usize] = g;
                    }
                    kept.clear();
                    for &w in &high {
                        if s.stamp[w as usize] == g {
                            kept.push(w);
                        } else {
                            s.score[w as usize] = depth;
                            scored.push(w);
                        }
                    }
                    std::mem::swap(&mut high, &mut kept);
                    high_sum = high
                        .iter()
                        .fold(0u64, |acc, &w| acc.wrapping_add(worker_mix(w)));
                }
            }
            if low == 0 && high.is_empty() {
                break;
            }
            depth = i as u32 + 1;
            node = child;
        }
        while low != 0 {
            let w = low.trailing_zeros();
            low &= low - 1;
            s.score[w as usize] = depth;
            scored.push(w);
        }
        for &w in &high {
            s.score[w as usize] = depth;
            scored.push(w);
        }
        self.emit_in_order(&scored, s, out);
        s.high = high;
        s.kept = kept;
        s.scored = scored;
    }

    /// The scored slots as matches in ascending (worker_id, dp_rank), clearing their scores: a walk
    /// of the slot order when many scored, else a sort of their ranks.
    fn emit_in_order(&self, scored: &[u32], s: &mut MatchScratch, out: &mut Vec<Match>) {
        let (mut own_order, mut own_rank) = (Vec::new(), Vec::new());
        let (order, rank) = if self.order_stale {
            // a worker came or went since `prepare_reads`: the order goes into the scratch
            own_order = std::mem::take(&mut s.order);
            own_rank = std::mem::take(&mut s.rank);
            self.compute_order(&mut own_order, &mut own_rank);
            (&own_order[..], &own_rank[..])
        } else {
            (&self.order[..], &self.rank[..])
        };
        out.reserve(scored.len());
        if scored.len() * 8 >= order.len() {
            for &slot in order {
                let score = s.score[slot as usize];
                if score != 0 {
                    s.score[slot as usize] = 0;
                    out.push(self.match_of(slot, score));
                }
            }
        } else {
            let mut keys = std::mem::take(&mut s.keys);
            keys.clear();
            keys.extend(
                scored
                    .iter()
                    .map(|&slot| (rank[slot as usize] as u64) << 32 | slot as u64),
            );
            keys.sort_unstable();
            for &k in &keys {
                let slot = k as u32;
                out.push(self.match_of(slot, s.score[slot as usize]));
                s.score[slot as usize] = 0;
            }
            s.keys = keys;
        }
        if self.order_stale {
            (s.order, s.rank) = (own_order, own_rank);
        }
    }
    fn match_of(&self, slot: u32, score: u32) -> Match {
        let w = self.workers[slot as usize]
            .as_ref()
            .expect("live worker slot");
        Match {
            worker_id: w.worker_id,
            dp_rank: w.dp_rank,
            score,
            tree_size: w.blocks.len() as u64,
        }
    }

    /// The index as stored events of one block each: per worker key in ascending (worker_id,
    /// dp_rank), depth-first from the root through the nodes that hold the worker (children in
    /// ascending tokens hash), one event per hash it holds, parent = its first hash on the parent
    /// node. `only_rank` restricts it to the worker keys of one dp rank.
    pub fn dump(&self, only_rank: Option<u32>) -> Vec<RouterEvent> {
        let mut keys: Vec<(u64, u32, u32)> = self
            .workers
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.as_ref().map(|w| (w.worker_id, w.dp_rank, i as u32)))
            .filter(|&(_, rank, _)| only_rank.is_none_or(|r| r == rank))
            .collect();
        keys.sort_unstable();
        let mut out = Vec::new();
        for (worker_id, dp_rank, slot) in keys {
            let event_id = self.workers[slot as usize]
                .as_ref()
                .and_then(|w| w.last_event_id)
                .unwrap_or(0);
            // (node, the worker's first hash on the parent node)
            let mut stack: Vec<(u32, Option<u64>)> = Vec::new();
            self.push_kids_holding(ROOT, slot, None, &mut stack);
            while let Some((node, parent_hash)) = stack.pop() {
                let mut first = None;
                for h in self.holders(node).filter(|h| h.worker == slot) {
                    first.get_or_insert(h.block_hash);
                    out.push(RouterEvent {
                        worker_id,
                        event_id,
                        dp_rank,
                        data: EventData::Stored {
                            parent_hash,
                            blocks: vec![StoredBlock {
                                block_hash: h.block_hash,
                                tokens_hash: self.nodes[node as usize].key,
                                mm_extra_info: None,
                            }],
                        },
                    });
                }
                self.push_kids_holding(node, slot, first, &mut stack);
            }
        }
        out
    }

    /// Pushes the children of `node` held by `slot` so that they pop in ascending key order.
    fn push_kids_holding(
        &self,
        node: u32,
        slot: u32,
        parent_hash: Option<u64>,
        stack: &mut Vec<(u32, Option<u64>)>,
    ) {
        let mut kids: Vec<u32> = self
            .kid_ids(node)
            .into_iter()
            .filter(|&c| self.has_worker(c, slot))
            .collect();
        kids.sort_unstable_by_key(|&c| std::cmp::Reverse(self.nodes[c as usize].key));
        stack.extend(kids.into_iter().map(|c| (c, parent_hash)));
    }

    /// A cheap estimate of the heap bytes held (no walk over nodes or holder sets, O(workers)):
    /// what the binding reports to the JavaScript GC.
    pub fn approx_bytes(&self) -> usize {
        let tables: usize = self
            .workers
            .iter()
            .flatten()
            .map(|w| w.blocks.heap_bytes())
            .sum();
        self.nodes.heap_bytes()
            + self.sets.heap_bytes()
            + self.aliases.capacity()
                * (std::mem::size_of::<Alias>() + std::mem::size_of::<Other>())
            + self.edges.slots.heap_bytes()
            + self.kid_lists.capacity() * 40
            + tables
    }

    /// Heap bytes held by the index by part (with counts of what is live), as `heap_bytes` sums
    /// them. For memory work; not a stable interface.
    #[doc(hidden)]
    pub fn heap_breakdown(&self) -> Vec<(&'static str, usize)> {
        let vec_bytes = |cap: usize, size: usize| cap * size;
        let plain_len: usize = self.sets.iter().map(|s| s.plain_len()).sum();
        let others_len: usize = self
            .sets
            .iter()
            .filter_map(|s| s.others.as_ref())
            .map(|o| o.len())
            .sum();
        let plain_bytes: usize = self
            .sets
            .iter()
            .filter_map(|s| s.plain_high.as_ref())
            .map(|p| std::mem::size_of::<Vec<u32>>() + vec_bytes(p.capacity(), 4))
            .sum();
        let others_bytes: usize = self
            .sets
            .iter()
            .filter_map(|s| s.others.as_ref())
            .map(|o| std::mem::size_of::<Vec<Other>>() + vec_bytes(o.capacity(), 16))
            .sum();
        let entries: usize = self.workers.iter().flatten().map(|w| w.blocks.len()).sum();
        let slots: usize = self
            .workers
            .iter()
            .flatten()
            .map(|w| w.blocks.slots())
            .sum();
        let table_bytes: usize = self
            .workers
            .iter()
            .flatten()
            .map(|w| w.blocks.heap_bytes())
            .sum();
        let u32s = |v: &Vec<u32>| vec_bytes(v.capacity(), 4);
        vec![
            ("nodes (count)", self.nodes.len() - self.free_nodes.len()),
            (
                "nodes",
                self.nodes.heap_bytes() + u32s(&self.free_nodes) + self.branching.capacity() * 8,
            ),
            (
                "holder sets (count)",
                self.sets.len() - self.free_sets.len(),
            ),
            (
                "holder sets",
                self.sets.heap_bytes() + u32s(&self.free_sets),
            ),
            ("plain holders (count)", plain_len),
            ("plain holders", plain_bytes),
            ("other holders (count)", others_len),
            (
                "other holders and aliases",
                others_bytes
                    + vec_bytes(self.aliases.capacity(), std::mem::size_of::<Alias>())
                    + u32s(&self.free_aliases),
            ),
            ("edges (count)", self.edges.len),
            (
                "edges and kid lists",
                self.edges.slots.heap_bytes()
                    + vec_bytes(self.kid_lists.capacity(), std::mem::size_of::<Vec<u32>>())
                    + self.kid_lists.iter().map(u32s).sum::<usize>()
                    + u32s(&self.free_lists),
            ),
            ("worker table entries (count)", entries),
            ("worker table slots (count)", slots),
            ("worker tables", table_bytes),
            (
                "workers",
                vec_bytes(
                    self.workers.capacity(),
                    std::mem::size_of::<Option<Worker>>(),
                ) + self.worker_index.capacity() * 17
                    + u32s(&self.free_workers),
            ),
        ]
    }

    /// Heap bytes held by the index (arena, holder sets, edges, workers' tables).
    pub fn heap_bytes(&self) -> usize {
        self.heap_breakdown()
            .iter()
            .filter(|(k, _)| !k.ends_with("(count)"))
            .map(|&(_, v)| v)
            .sum()
    }
}
/// An edge from a node with several children.
#[derive(Debug, Clone, Copy)]
struct Edge {
    key: u64,
    parent: u32,
    child: u32,
}

const NO_EDGE: Edge = Edge {
    key: 0,
    parent: NIL,
    child: NIL,
};

/// (parent, tokens hash) → child, open addressing with linear probing (a lookup usually reads one
/// cache line, where a SwissTable reads a control group, then a bucket) and backward-shift deletion;
/// at most 3/4 full. The hash is keyed per index, as `MixState` is, so that crafted hashes cannot
/// choose collisions.
#[derive(Debug)]
struct EdgeTable {
    slots: Arena<Edge>,
    len: usize,
    seed: u64,
}

impl EdgeTable {
    fn new() -> Self {
        EdgeTable {
            slots: Arena::default(),
            len: 0,
            seed: std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
                | 1,
        }
    }

    #[inline]
    fn home(&self, parent: u32, key: u64) -> usize {
        let mut z =
            (key ^ self.seed).wrapping_add((parent as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 32)).wrapping_mul(0xd6e8_feb8_6659_fd93);
        z = (z ^ (z >> 29)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 32)) as usize & (self.slots.len() - 1)
    }

    /// The slot holding (parent, key), or the empty slot ending its probe run. The table is never
    /// full (grown at 3/4), so the run ends.
    #[inline]
    fn probe(&self, parent: u32, key: u64) -> Result<usize, usize> {
        let mask = self.slots.len() - 1;
        let mut i = self.home(parent, key);
        loop {
            let e = &self.slots[i];
            if e.child == NIL {
                return Err(i);
            }
            if e.key == key && e.parent == parent {
                return Ok(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// Starts loading the slot where (parent, key) is looked up first.
    #[inline]
    fn prefetch(&self, parent: u32, key: u64) {
        if !self.slots.is_empty() {
            prefetch(
                self.slots
                    .as_slice()
                    .as_ptr()
                    .wrapping_add(self.home(parent, key)),
            );
        }
    }

    #[inline]
    fn get(&self, parent: u32, key: u64) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        self.probe(parent, key).ok().map(|i| self.slots[i].child)
    }

    fn insert(&mut self, parent: u32, key: u64, child: u32) {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        match self.probe(parent, key) {
            Ok(i) => self.slots[i].child = child,
            Err(i) => {
                self.slots[i] = Edge { key, parent, child };
                self.len += 1;
            }
        }
    }

    fn remove(&mut self, parent: u32, key: u64) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let i = self.probe(parent, key).ok()?;
        let removed = self.slots[i].child;
        // backward shift: later entries of the run move into the hole when their home allows
        let mut hole = i;
        let mut j = (i + 1) & mask;
        loop {
            let e = self.slots[j];
            if e.child == NIL {
                break;
            }
            let home = self.home(e.parent, e.key);
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.slots[hole] = e;
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.slots[hole] = NO_EDGE;
        self.len -= 1;
        if self.slots.len() > 64 && self.len * 8 < self.slots.len() {
            self.resize(self.slots.len() / 4);
        }
        Some(removed)
    }

    fn grow(&mut self) {
        self.resize((self.slots.len() * 2).max(64));
    }

    fn resize(&mut self, cap: usize) {
        let old = std::mem::replace(&mut self.slots, Arena::filled(cap, NO_EDGE));
        self.len = 0;
        for &e in old.iter().filter(|e| e.child != NIL) {
            self.insert(e.parent, e.key, e.child);
        }
    }
}

fn holders_of<'a>(n: &Node, sets: &'a Arena<HolderSet>) -> impl Iterator<Item = Holder> + 'a {
    let (one, set): (Option<Holder>, Option<&HolderSet>) = match n.worker {
        NOBODY => (None, None),
        w if w & SPILLED != 0 => (None, Some(&sets[(w & !SPILLED) as usize])),
        w => (
            Some(Holder {
                block_hash: n.hash,
                worker: w,
            }),
            None,
        ),
    };
    let plain = set.into_iter().flat_map(|s| {
        s.plain().map(|worker| Holder {
            block_hash: s.hash,
            worker,
        })
    });
    let others = set
        .and_then(|s| s.others.as_deref())
        .into_iter()
        .flatten()
        .map(|o| Holder {
            block_hash: o.hash,
            worker: o.worker,
        });
    one.into_iter().chain(plain).chain(others)
}

/// The worker slots holding a node, each at least once.
fn workers_of<'a>(n: &Node, sets: &'a Arena<HolderSet>) -> impl Iterator<Item = u32> + 'a {
    holders_of(n, sets).map(|h| h.worker)
}

/// The block hash a worker's table entry stands for: its alias's, or its node's own.
struct Resolver<'a> {
    nodes: &'a Arena<Node>,
    sets: &'a Arena<HolderSet>,
    aliases: &'a [Alias],
}

/// The set of a node's `worker` field, or NIL.
#[inline]
fn set_of(worker: u32) -> u32 {
    if worker != NOBODY && worker & SPILLED != 0 {
        worker & !SPILLED
    } else {
        NIL
    }
}

impl table::Resolve for Resolver<'_> {
    #[inline]
    fn hash(&self, entry: u32) -> u64 {
        if entry & ALIAS != 0 {
            return self.aliases[(entry & !ALIAS) as usize].hash;
        }
        let n = &self.nodes[entry as usize];
        match set_of(n.worker) {
            NIL => n.hash,
            s => self.sets[s as usize].hash,
        }
    }

    /// In two passes, nodes then holder sets, each without a branch on what it loads, so that
    /// the cache misses of many entries overlap.
    fn hashes(&self, entries: &[u32], out: &mut Vec<u64>) {
        out.clear();
        let mut sets: Vec<u32> = Vec::with_capacity(entries.len());
        for &e in entries {
            if e & ALIAS != 0 {
                out.push(self.aliases[(e & !ALIAS) as usize].hash);
                sets.push(NIL);
            } else {
                let n = &self.nodes[e as usize];
                out.push(n.hash);
                sets.push(set_of(n.worker));
            }
        }
        for (h, &s) in out.iter_mut().zip(&sets) {
            if s != NIL {
                *h = self.sets[s as usize].hash;
            }
        }
    }
}

/// A block hash repeated within a store, or equal to its parent.
fn repeats(blocks: &[StoredBlock], parent: Option<u64>) -> bool {
    if parent.is_some_and(|p| blocks.iter().any(|b| b.block_hash == p)) {
        return true;
    }
    if blocks.len() <= 16 {
        return blocks
            .iter()
            .enumerate()
            .any(|(i, b)| blocks[..i].iter().any(|c| c.block_hash == b.block_hash));
    }
    let mut hashes: Vec<u64> = blocks.iter().map(|b| b.block_hash).collect();
    hashes.sort_unstable();
    hashes.windows(2).any(|w| w[0] == w[1])
}

// ------------------------------------------------------------------------------------------------
// the dump, one block at a time

/// Each index starts its `version` 2^40 above the previous one, so that a cursor never mistakes
/// another index (or a later state) for the one it was opened on.
fn next_version_base() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1 << 40, Ordering::Relaxed)
}

/// The index changed since the dump cursor was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumpStale;

/// A position in `RadixIndex::dump`'s sequence, read one event at a time by `dump_next`. It holds
/// the worker keys still to go, the depth-first stack of the current one and the hashes of the node
/// being written: O(keys + tree depth × fan-out) memory, never the events. It belongs to the index
/// that opened it and is valid until that index changes.
#[derive(Debug, Clone)]
pub struct DumpCursor {
    version: u64,
    /// (worker_id, dp_rank, slot) in ascending order, and the next one to start
    keys: Vec<(u64, u32, u32)>,
    next_key: usize,
    worker_id: u64,
    dp_rank: u32,
    slot: u32,
    event_id: u64,
    stack: Vec<(u32, Option<u64>)>,
    /// the current node's hashes held by the worker, last first, with its tokens hash and parent
    hashes: Vec<u64>,
    tokens_hash: u64,
    parent_hash: Option<u64>,
}

impl RadixIndex {
    /// Opens a cursor over `dump(only_rank)`.
    pub fn dump_cursor(&self, only_rank: Option<u32>) -> DumpCursor {
        let mut keys: Vec<(u64, u32, u32)> = self
            .workers
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.as_ref().map(|w| (w.worker_id, w.dp_rank, i as u32)))
            .filter(|&(_, rank, _)| only_rank.is_none_or(|r| r == rank))
            .collect();
        keys.sort_unstable();
        DumpCursor {
            version: self.version,
            keys,
            next_key: 0,
            worker_id: 0,
            dp_rank: 0,
            slot: NOBODY,
            event_id: 0,
            stack: Vec::new(),
            hashes: Vec::new(),
            tokens_hash: 0,
            parent_hash: None,
        }
    }

    /// Whether the cursor's index is unchanged since it was opened.
    pub fn dump_valid(&self, c: &DumpCursor) -> bool {
        c.version == self.version
    }

    /// The next event of the dump the cursor was opened on (the same events in the same order as
    /// `dump`), `Ok(None)` at the end, `Err(DumpStale)` once this index changed since.
    pub fn dump_next(&self, c: &mut DumpCursor) -> Result<Option<RouterEvent>, DumpStale> {
        if !self.dump_valid(c) {
            return Err(DumpStale);
        }
        loop {
            if let Some(block_hash) = c.hashes.pop() {
                return Ok(Some(RouterEvent {
                    worker_id: c.worker_id,
                    event_id: c.event_id,
                    dp_rank: c.dp_rank,
                    data: EventData::Stored {
                        parent_hash: c.parent_hash,
                        blocks: vec![StoredBlock {
                            block_hash,
                            tokens_hash: c.tokens_hash,
                            mm_extra_info: None,
                        }],
                    },
                }));
            }
            if let Some((node, parent_hash)) = c.stack.pop() {
                let slot = c.slot;
                c.hashes.extend(
                    self.holders(node)
                        .filter(|h| h.worker == slot)
                        .map(|h| h.block_hash),
                );
                let first = c.hashes.first().copied();
                c.hashes.reverse();
                c.tokens_hash = self.nodes[node as usize].key;
                c.parent_hash = parent_hash;
                self.push_kids_holding(node, slot, first, &mut c.stack);
                continue;
            }
            let Some(&(worker_id, dp_rank, slot)) = c.keys.get(c.next_key) else {
                return Ok(None);
            };
            c.next_key += 1;
            (c.worker_id, c.dp_rank, c.slot) = (worker_id, dp_rank, slot);
            c.event_id = self
                .workers
                .get(slot as usize)
                .and_then(|w| w.as_ref())
                .and_then(|w| w.last_event_id)
                .unwrap_or(0);
            self.push_kids_holding(ROOT, slot, None, &mut c.stack);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The branching bits a query prefetches by follow every node's children through stores that
    /// split runs, removes that merge them back, and clears that drop whole subtrees.
    #[test]
    fn branching_bits_follow_the_children() {
        let mut idx = RadixIndex::new();
        let mut z = 0x1234_5678_9abc_def0u64;
        let mut next = move |n: u64| {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            (x ^ (x >> 27)) % n
        };
        let mut held: Vec<(u64, u64)> = Vec::new();
        for step in 0..20_000u64 {
            let worker = next(6);
            match next(10) {
                0..=5 => {
                    // a chain of tokens drawn from a small alphabet, so that paths share and split
                    let len = 1 + next(6) as usize;
                    let tokens: Vec<u64> = (0..len).map(|_| 1 + next(3)).collect();
                    let mut path = 0u64;
                    let blocks: Vec<StoredBlock> = tokens
                        .iter()
                        .map(|&t| {
                            path = path.wrapping_mul(31).wrapping_add(t);
                            StoredBlock {
                                block_hash: path ^ worker << 56,
                                tokens_hash: path,
                                mm_extra_info: None,
                            }
                        })
                        .collect();
                    held.extend(blocks.iter().map(|b| (worker, b.block_hash)));
                    let data = DataRef::Stored {
                        parent_hash: None,
                        blocks: &blocks,
                    };
                    idx.apply(worker, step, 0, data);
                }
                6..=8 if !held.is_empty() => {
                    let (w, h) = held.swap_remove(next(held.len() as u64) as usize);
                    idx.apply(w, step, 0, DataRef::Removed(&[h]));
                }
                _ => {
                    idx.apply(worker, step, 0, DataRef::Cleared);
                    held.retain(|&(w, _)| w != worker);
                }
            }
            for n in 0..idx.nodes.len() as u32 {
                let kids = idx.nodes[n as usize].kids;
                assert_eq!(
                    idx.is_branching(n),
                    kids != NIL && kids & MANY != 0,
                    "node {n} after step {step}"
                );
            }
        }
    }
}
