//! The radix index (SPEC 6): which worker `(worker_id, dp_rank)` holds which blocks, as a tree keyed by
//! the tokens hashes of the path from the root, so that `find_matches` can tell who holds the longest
//! prefix of a request.
//!
//! Layout, for memory: nodes live in one arena (`Vec<Node>`, 40 bytes each) addressed by u32; a node's
//! single child is stored inline and only a node with several children gets a hash map; the holders of
//! a node are a small vector with one inline slot. Each worker key has a map block hash → node.
//!
//! Rules that are easy to miss:
//! - a node that loses its last holder is removed from the tree and its children are detached: blocks
//!   still held below it become unreachable (stale) but stay in their workers' maps until removed;
//! - a block hash stored at a new place leaves its old node first;
//! - `cleared` applies to every dp rank of the worker id (Dynamo semantics).

use std::collections::HashMap;

use smallvec::SmallVec;

use crate::ingest::MixState;
use crate::wire::{DataRef, EventData, RouterEvent, StoredBlock};

const NIL: u32 = u32::MAX;
/// `Node::kids` with this bit set indexes `RadixIndex::kid_maps`; otherwise it is the only child.
const MANY: u32 = 1 << 31;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ApplyOutcome {
    Applied = 0,
    ParentNotFound = 1,
    BlockNotFound = 2,
    InvalidBlockSequence = 3,
}

/// Counter indices (the same order as INDEX_COUNTER_NAMES in ts/binding.ts).
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

#[derive(Debug, Clone, Copy)]
struct Holder {
    block_hash: u64,
    worker: u32,
}

#[derive(Debug, Clone)]
struct Node {
    /// The tokens hash of the edge from the parent.
    key: u64,
    /// NIL for the root, for a detached node, and for a free slot.
    parent: u32,
    /// NIL (no child), a child id, or MANY | index into `kid_maps`.
    kids: u32,
    /// (worker, block hash) pairs in insertion order; a worker may hold several hashes here.
    holders: SmallVec<[Holder; 1]>,
    /// Wrapping sum of `worker_mix(slot)` over the distinct workers here: find_matches compares it
    /// with the active set's sum to skip levels where nobody drops out without reading the holders.
    worker_sum: u64,
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
    blocks: HashMap<u64, u32, MixState>,
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

#[derive(Debug)]
pub struct RadixIndex {
    nodes: Vec<Node>,
    free_nodes: Vec<u32>,
    kid_maps: Vec<HashMap<u64, u32, MixState>>,
    free_maps: Vec<u32>,
    /// Worker slots; a forgotten worker's slot is None until reused.
    workers: Vec<Option<Worker>>,
    free_workers: Vec<u32>,
    worker_index: HashMap<(u64, u32), u32>,
    counters: [u64; INDEX_COUNTER_NAMES.len()],
    // find_matches scratch
    stamp: Vec<u32>,
    generation: u32,
    active: Vec<u32>,
    kept: Vec<u32>,
}

impl Default for RadixIndex {
    fn default() -> Self {
        Self::new()
    }
}

const ROOT: u32 = 0;

impl RadixIndex {
    pub fn new() -> Self {
        RadixIndex {
            nodes: vec![Node { key: 0, parent: NIL, kids: NIL, holders: SmallVec::new(), worker_sum: 0 }],
            free_nodes: Vec::new(),
            kid_maps: Vec::new(),
            free_maps: Vec::new(),
            workers: Vec::new(),
            free_workers: Vec::new(),
            worker_index: HashMap::new(),
            counters: [0; INDEX_COUNTER_NAMES.len()],
            stamp: Vec::new(),
            generation: 0,
            active: Vec::new(),
            kept: Vec::new(),
        }
    }

    pub fn counters(&self) -> &[u64; INDEX_COUNTER_NAMES.len()] {
        &self.counters
    }

    /// Total (worker key, block hash) entries.
    pub fn size(&self) -> u64 {
        self.workers.iter().flatten().map(|w| w.blocks.len() as u64).sum()
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

    fn child(&self, node: u32, key: u64) -> Option<u32> {
        let kids = self.nodes[node as usize].kids;
        if kids == NIL {
            None
        } else if kids & MANY != 0 {
            self.kid_maps[(kids & !MANY) as usize].get(&key).copied()
        } else if self.nodes[kids as usize].key == key {
            Some(kids)
        } else {
            None
        }
    }

    fn alloc_node(&mut self, key: u64, parent: u32) -> u32 {
        let node = Node { key, parent, kids: NIL, holders: SmallVec::new(), worker_sum: 0 };
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
        } else if kids & MANY != 0 {
            self.kid_maps[(kids & !MANY) as usize].insert(key, child);
        } else {
            let mut map = HashMap::with_capacity_and_hasher(4, MixState::default());
            map.insert(self.nodes[kids as usize].key, kids);
            map.insert(key, child);
            let slot = match self.free_maps.pop() {
                Some(s) => {
                    self.kid_maps[s as usize] = map;
                    s
                }
                None => {
                    self.kid_maps.push(map);
                    (self.kid_maps.len() - 1) as u32
                }
            };
            self.nodes[parent as usize].kids = MANY | slot;
        }
    }

    fn remove_kid(&mut self, parent: u32, key: u64) {
        let kids = self.nodes[parent as usize].kids;
        if kids == NIL {
            return;
        }
        if kids & MANY != 0 {
            let slot = (kids & !MANY) as usize;
            self.kid_maps[slot].remove(&key);
            match self.kid_maps[slot].len() {
                0 => {
                    self.free_map(slot);
                    self.nodes[parent as usize].kids = NIL;
                }
                1 => {
                    let only = *self.kid_maps[slot].values().next().unwrap_or(&NIL);
                    self.free_map(slot);
                    self.nodes[parent as usize].kids = only;
                }
                _ => {}
            }
        } else if self.nodes[kids as usize].key == key {
            self.nodes[parent as usize].kids = NIL;
        }
    }

    fn free_map(&mut self, slot: usize) {
        self.kid_maps[slot] = HashMap::default();
        self.free_maps.push(slot as u32);
    }

    /// The child ids of a node (any order).
    fn kid_ids(&self, node: u32) -> Vec<u32> {
        let kids = self.nodes[node as usize].kids;
        if kids == NIL {
            Vec::new()
        } else if kids & MANY != 0 {
            self.kid_maps[(kids & !MANY) as usize].values().copied().collect()
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
            let (parent, key) = (self.nodes[n as usize].parent, self.nodes[n as usize].key);
            if parent != NIL {
                self.remove_kid(parent, key);
            }
            for c in self.kid_ids(n) {
                self.nodes[c as usize].parent = NIL;
                if self.nodes[c as usize].holders.is_empty() {
                    stack.push(c);
                }
            }
            let kids = self.nodes[n as usize].kids;
            if kids != NIL && kids & MANY != 0 {
                self.free_map((kids & !MANY) as usize);
            }
            self.nodes[n as usize] = Node { key: 0, parent: NIL, kids: NIL, holders: SmallVec::new(), worker_sum: 0 };
            self.free_nodes.push(n);
        }
    }

    /// Removes the holder (worker, hash) from `node`, dropping the node when it is left empty.
    fn leave(&mut self, node: u32, worker: u32, block_hash: u64) {
        let n = &mut self.nodes[node as usize];
        if let Some(i) = n.holders.iter().position(|h| h.worker == worker && h.block_hash == block_hash) {
            n.holders.remove(i);
            if !n.holders.iter().any(|h| h.worker == worker) {
                n.worker_sum = n.worker_sum.wrapping_sub(worker_mix(worker));
            }
        }
        if n.holders.is_empty() {
            self.drop_empty(node);
        }
    }

    // --------------------------------------------------------------------------------------------
    // workers

    fn worker_slot(&mut self, worker_id: u64, dp_rank: u32) -> u32 {
        if let Some(&w) = self.worker_index.get(&(worker_id, dp_rank)) {
            return w;
        }
        let worker = Worker { worker_id, dp_rank, blocks: HashMap::default(), last_event_id: None };
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
        slot
    }

    fn worker(&mut self, slot: u32) -> &mut Worker {
        self.workers[slot as usize].as_mut().expect("live worker slot")
    }

    /// Drops every block of a worker slot (it stays known).
    fn clear_slot(&mut self, slot: u32) {
        let blocks = std::mem::take(&mut self.worker(slot).blocks);
        for (hash, node) in blocks {
            self.leave(node, slot, hash);
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
        }
    }

    /// Drops every block of every dp rank of the worker and forgets it.
    pub fn remove_worker(&mut self, worker_id: u64) {
        for slot in self.slots_of(worker_id) {
            self.forget_slot(slot);
        }
    }

    pub fn remove_worker_dp_rank(&mut self, worker_id: u64, dp_rank: u32) {
        if let Some(&slot) = self.worker_index.get(&(worker_id, dp_rank)) {
            self.forget_slot(slot);
        }
    }

    // --------------------------------------------------------------------------------------------
    // events

    pub fn apply_event(&mut self, ev: &RouterEvent) -> ApplyOutcome {
        self.apply(ev.worker_id, ev.event_id, ev.dp_rank, ev.data.as_data_ref())
    }

    /// Applies one event given by parts (the ingest path applies its chunks without copying them).
    pub fn apply(&mut self, worker_id: u64, event_id: u64, dp_rank: u32, data: DataRef) -> ApplyOutcome {
        let slot = self.worker_slot(worker_id, dp_rank);
        self.worker(slot).last_event_id = Some(event_id);
        match data {
            DataRef::Stored { parent_hash, blocks } => self.store(slot, parent_hash, blocks),
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

    fn store(&mut self, slot: u32, parent_hash: Option<u64>, blocks: &[StoredBlock]) -> ApplyOutcome {
        if repeats(blocks, parent_hash) {
            self.counters[C_INVALID_SEQUENCE] += 1;
            return ApplyOutcome::InvalidBlockSequence;
        }
        let mut current = match parent_hash {
            None => ROOT,
            Some(p) => match self.worker(slot).blocks.get(&p) {
                Some(&n) => n,
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
            let n = &mut self.nodes[child as usize];
            let mut on_node = false;
            let mut held = false;
            for h in &n.holders {
                if h.worker == slot {
                    on_node = true;
                    held |= h.block_hash == b.block_hash;
                }
            }
            if !held {
                n.holders.push(Holder { block_hash: b.block_hash, worker: slot });
                if !on_node {
                    n.worker_sum = n.worker_sum.wrapping_add(worker_mix(slot));
                }
            }
            // one map probe: the previous place of this hash, if any, is replaced
            if let Some(old) = self.worker(slot).blocks.insert(b.block_hash, child) {
                if old != child {
                    // the hash moved: it leaves its old node. The child already holds it, and
                    // `old` is neither `current` left empty (current holds this worker's previous
                    // hash, or is the root) nor the child's parent, so `child` stays valid.
                    self.leave(old, slot, b.block_hash);
                }
            }
            current = child;
        }
        self.counters[C_STORED] += 1;
        self.counters[C_BLOCKS_STORED] += blocks.len() as u64;
        ApplyOutcome::Applied
    }

    fn remove(&mut self, slot: u32, hashes: &[u64]) -> ApplyOutcome {
        let mut missing = 0u64;
        for &h in hashes {
            match self.worker(slot).blocks.remove(&h) {
                Some(node) => {
                    self.leave(node, slot, h);
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
        let mut out = Vec::new();
        let Some(&first) = query.first() else {
            return out;
        };
        let Some(mut node) = self.child(ROOT, first) else {
            return out;
        };
        if self.stamp.len() < self.workers.len() {
            self.stamp.resize(self.workers.len(), 0);
        }
        let mut active = std::mem::take(&mut self.active);
        let mut kept = std::mem::take(&mut self.kept);
        active.clear();
        let g = self.next_generation();
        for h in &self.nodes[node as usize].holders {
            if self.stamp[h.worker as usize] != g {
                self.stamp[h.worker as usize] = g;
                active.push(h.worker);
            }
        }
        let mut active_sum = self.nodes[node as usize].worker_sum;
        let mut depth = 1u32;
        for (i, &q) in query.iter().enumerate().skip(1) {
            if early_exit && active.len() == 1 {
                break;
            }
            let Some(child) = self.child(node, q) else {
                break;
            };
            if self.nodes[child as usize].worker_sum == active_sum {
                // the same worker set: nobody drops out, nobody is added
                depth = i as u32 + 1;
                node = child;
                continue;
            }
            let g = self.next_generation();
            for h in &self.nodes[child as usize].holders {
                self.stamp[h.worker as usize] = g;
            }
            kept.clear();
            for &w in &active {
                if self.stamp[w as usize] == g {
                    kept.push(w);
                } else {
                    out.push(self.match_of(w, depth));
                }
            }
            std::mem::swap(&mut active, &mut kept);
            if active.is_empty() {
                break;
            }
            active_sum = active.iter().fold(0u64, |acc, &w| acc.wrapping_add(worker_mix(w)));
            depth = i as u32 + 1;
            node = child;
        }
        for &w in &active {
            out.push(self.match_of(w, depth));
        }
        self.active = active;
        self.kept = kept;
        out.sort_unstable_by_key(|m| (m.worker_id, m.dp_rank));
        out
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

    fn match_of(&self, slot: u32, score: u32) -> Match {
        let w = self.workers[slot as usize].as_ref().expect("live worker slot");
        Match { worker_id: w.worker_id, dp_rank: w.dp_rank, score, tree_size: w.blocks.len() as u64 }
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
            let event_id = self.workers[slot as usize].as_ref().and_then(|w| w.last_event_id).unwrap_or(0);
            // (node, the worker's first hash on the parent node)
            let mut stack: Vec<(u32, Option<u64>)> = Vec::new();
            self.push_kids_holding(ROOT, slot, None, &mut stack);
            while let Some((node, parent_hash)) = stack.pop() {
                let mut first = None;
                for h in self.nodes[node as usize].holders.iter().filter(|h| h.worker == slot) {
                    first.get_or_insert(h.block_hash);
                    out.push(RouterEvent {
                        worker_id,
                        event_id,
                        dp_rank,
                        data: EventData::Stored {
                            parent_hash,
                            blocks: vec![StoredBlock { block_hash: h.block_hash, tokens_hash: self.nodes[node as usize].key, mm_extra_info: None }],
                        },
                    });
                }
                self.push_kids_holding(node, slot, first, &mut stack);
            }
        }
        out
    }

    /// Pushes the children of `node` held by `slot` so that they pop in ascending key order.
    fn push_kids_holding(&self, node: u32, slot: u32, parent_hash: Option<u64>, stack: &mut Vec<(u32, Option<u64>)>) {
        let mut kids: Vec<u32> = self
            .kid_ids(node)
            .into_iter()
            .filter(|&c| self.nodes[c as usize].holders.iter().any(|h| h.worker == slot))
            .collect();
        kids.sort_unstable_by_key(|&c| std::cmp::Reverse(self.nodes[c as usize].key));
        stack.extend(kids.into_iter().map(|c| (c, parent_hash)));
    }

    /// Approximate heap bytes held by the index (arena, maps, holder spill-over).
    pub fn heap_bytes(&self) -> usize {
        let map_bytes = |cap: usize, entry: usize| cap * (entry + 1);
        let nodes = self.nodes.capacity() * std::mem::size_of::<Node>()
            + self.nodes.iter().filter(|n| n.holders.spilled()).map(|n| n.holders.capacity() * std::mem::size_of::<Holder>()).sum::<usize>();
        let kid_maps: usize = self.kid_maps.iter().map(|m| map_bytes(m.capacity(), 12)).sum();
        let workers: usize = self.workers.iter().flatten().map(|w| map_bytes(w.blocks.capacity(), 12)).sum();
        nodes + kid_maps + workers + self.free_nodes.capacity() * 4
    }
}

/// A block hash repeated within a store, or equal to its parent.
fn repeats(blocks: &[StoredBlock], parent: Option<u64>) -> bool {
    if parent.is_some_and(|p| blocks.iter().any(|b| b.block_hash == p)) {
        return true;
    }
    if blocks.len() <= 16 {
        return blocks.iter().enumerate().any(|(i, b)| blocks[..i].iter().any(|c| c.block_hash == b.block_hash));
    }
    let mut hashes: Vec<u64> = blocks.iter().map(|b| b.block_hash).collect();
    hashes.sort_unstable();
    hashes.windows(2).any(|w| w[0] == w[1])
}
