//! The radix index (SPEC 6): which worker `(worker_id, dp_rank)` holds which blocks, as a tree keyed by
//! the tokens hashes of the path from the root, so that `find_matches` can tell who holds the longest
//! prefix of a request.
//!
//! Layout (index/runs.rs): the tree is compressed into runs, chains of blocks without branching
//! stored contiguously, with holders recorded per run as (worker, how far along the run it holds);
//! runs split wherever the holders stop being that simple (see there). The children of runs with
//! several live in one open-addressing table keyed by (parent, tokens hash), so a step down costs two
//! cache misses (table slot, child); each such run also lists its children for the cascade and the
//! dump. Each run keeps a bitmask of its worker slots below 64, so that `find_matches` intersects
//! worker sets with one AND per run. Each worker key has a map block hash → (run, position).
//!
//! Rules that are easy to miss:
//! - a node that loses its last holder is removed from the tree and its children are detached: blocks
//!   still held below it become unreachable (stale) but stay in their workers' maps until removed;
//! - a block hash stored at a new place leaves its old node first;
//! - `cleared` applies to every dp rank of the worker id (Dynamo semantics).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use crate::hash::{compute_block_hashes_with, BlockHashOptions};
use crate::wire::{
    decode_router_events_encoded, BlockExtraInfo, DataRef, EventData, EventMeta, RouterEvent,
    StoredBlock, WireError,
};

mod runs;
pub use runs::{DumpCursor, RadixIndex};

const NIL: u32 = u32::MAX;
/// `Run::kids` with this bit set indexes `RadixIndex::kid_lists` (the edges are in `edges`);
/// otherwise it is the only child.
const MANY: u32 = 1 << 31;
/// Worker slots below this are tracked by the bitmasks (`Run::low`, the query's active mask).
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

/// One match: a worker key, its matched prefix length in blocks, and how many hashes it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    pub worker_id: u64,
    pub dp_rank: u32,
    pub score: u32,
    pub tree_size: u64,
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
    slots: Vec<Edge>,
    len: usize,
    seed: u64,
}

impl EdgeTable {
    fn new() -> Self {
        EdgeTable {
            slots: Vec::new(),
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

    fn bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Edge>()
    }

    fn grow(&mut self) {
        self.resize((self.slots.len() * 2).max(64));
    }

    fn resize(&mut self, cap: usize) {
        let old = std::mem::replace(&mut self.slots, vec![NO_EDGE; cap]);
        self.len = 0;
        for e in old.into_iter().filter(|e| e.child != NIL) {
            self.insert(e.parent, e.key, e.child);
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
