//! The radix index with compressed edges (SPEC 6 semantics, representation notes there).
//!
//! A *run* is a chain of tree nodes (one per block position) without branching inside: its tokens
//! hashes and block hashes are contiguous, and its children hang off its last position. Holders are
//! recorded per run, not per block: an entry `(worker slot, cut)` says the worker holds positions
//! `0..cut` of the run, with the run's canonical block hashes (those of the worker that created the
//! positions) unless the entry points to its own hash vector (an engine with another hash seed).
//! Every shape the semantics allow beyond "a prefix of the run under one hash per position" is made
//! representable by splitting runs:
//! - a worker holding a position but not the one before it (an inner remove, or a move) gets its
//!   position split off as the start of a new run (it is then on a child but not on its parent, which
//!   queries and the dump already treat as stale);
//! - a worker holding several hashes for one position gets that position isolated in a run of length
//!   one marked `multi`, whose entries are the (worker, hash) pairs in insertion order;
//! - a position nobody holds any more is cut off with everything after it, and the run's children
//!   are detached (they stay in their workers' maps, unreachable, until removed).
//!
//! So each live run has at least one entry and some entry covers all of it.
//!
//! Each worker key has a map block hash → (run, position), updated for the moved tail on a split.

use std::collections::HashMap;

use super::{
    next_version_base, repeats, ApplyOutcome, DumpStale, EdgeTable, Match, MixState,
    C_BLOCKS_REMOVED, C_BLOCKS_STORED, C_BLOCK_NOT_FOUND, C_CLEARED, C_INVALID_SEQUENCE,
    C_PARENT_NOT_FOUND, C_REMOVED, C_STORED, INDEX_COUNTER_NAMES, LOW, MANY, NIL,
};
use crate::wire::{DataRef, EventData, RouterEvent, StoredBlock};

/// `Entry::own` of an entry with the run's canonical hashes.
const CANON: u32 = u32::MAX;
/// `Entry::slot` of a removed entry of a big multi run (until compaction).
const TOMB: u32 = u32::MAX;
/// A run with this many entries gets an index of them.
const BIG: usize = 128;
const ROOT: u32 = 0;

#[derive(Debug, Clone, Copy)]
struct Entry {
    slot: u32,
    /// positions 0..cut held
    cut: u32,
    /// CANON, or the index in `RadixIndex::owns` of this entry's own hashes (length `cut`)
    own: u32,
}

#[derive(Debug)]
enum Big {
    /// slot → entry index (a regular run holds each worker once)
    Regular(HashMap<u32, u32, MixState>),
    /// (slot, hash) → entry index, and entries per slot
    Multi {
        at: HashMap<(u32, u64), u32, MixState>,
        per: HashMap<u32, u32, MixState>,
    },
}

#[derive(Debug, Default)]
struct Run {
    /// [tokens hash, canonical block hash] per position
    blocks: Vec<[u64; 2]>,
    items: Vec<Entry>,
    /// entries that are not tombs
    live: u32,
    /// bit s set while slot s < LOW is here; `high`: distinct slots >= LOW here
    low: u64,
    high: u32,
    multi: bool,
    /// slots < LOW whose entry covers the whole run, valid unless `dirty` (recomputed by a query)
    full: u64,
    dirty: bool,
    big: Option<Box<Big>>,
    parent: u32,
    /// NIL, the only child, or MANY | index into `kid_lists`
    kids: u32,
    /// position in the parent's kid list
    pos: u32,
}

impl Run {
    fn fresh(parent: u32) -> Run {
        Run {
            parent,
            kids: NIL,
            pos: NIL,
            dirty: true,
            ..Run::default()
        }
    }

    #[inline]
    fn key(&self, p: usize) -> u64 {
        self.blocks[p][0]
    }

    fn has_slot(&self, slot: u32) -> bool {
        if slot < LOW {
            return self.low >> slot & 1 != 0;
        }
        match self.big.as_deref() {
            Some(Big::Regular(m)) => m.contains_key(&slot),
            Some(Big::Multi { per, .. }) => per.contains_key(&slot),
            None => self.items.iter().any(|e| e.slot == slot),
        }
    }

    /// The entry of `slot` in a regular run.
    fn entry_of(&self, slot: u32) -> Option<usize> {
        if slot < LOW && self.low >> slot & 1 == 0 {
            return None;
        }
        match self.big.as_deref() {
            Some(Big::Regular(m)) => m.get(&slot).map(|&i| i as usize),
            Some(Big::Multi { .. }) => None,
            None => self.items.iter().position(|e| e.slot == slot),
        }
    }

    fn count(&mut self, slot: u32, arrived: bool) {
        if slot < LOW {
            if arrived {
                self.low |= 1 << slot;
            } else {
                self.low &= !(1 << slot);
            }
        } else if arrived {
            self.high += 1;
        } else {
            self.high -= 1;
        }
    }

    /// The distinct worker slots here.
    fn slots(&self) -> Box<dyn Iterator<Item = u32> + '_> {
        match self.big.as_deref() {
            Some(Big::Multi { per, .. }) => Box::new(per.keys().copied()),
            _ if self.multi => {
                let mut v: Vec<u32> = self
                    .items
                    .iter()
                    .filter(|e| e.slot != TOMB)
                    .map(|e| e.slot)
                    .collect();
                v.sort_unstable();
                v.dedup();
                Box::new(v.into_iter())
            }
            _ => Box::new(self.items.iter().map(|e| e.slot)),
        }
    }

    fn max_cut(&self) -> u32 {
        if self.multi {
            return (self.live > 0) as u32;
        }
        self.items.iter().map(|e| e.cut).max().unwrap_or(0)
    }
}

#[derive(Debug)]
struct Worker {
    worker_id: u64,
    dp_rank: u32,
    /// block hash → run << 32 | position
    blocks: HashMap<u64, u64, MixState>,
    last_event_id: Option<u64>,
}

#[inline]
fn loc(run: u32, p: u32) -> u64 {
    (run as u64) << 32 | p as u64
}

#[inline]
fn unloc(l: u64) -> (u32, u32) {
    ((l >> 32) as u32, l as u32)
}

#[derive(Debug)]
/// The index: which worker key holds which blocks (SPEC 6).
pub struct RadixIndex {
    runs: Vec<Run>,
    free_runs: Vec<u32>,
    owns: Vec<Vec<u64>>,
    free_owns: Vec<u32>,
    edges: EdgeTable,
    kid_lists: Vec<Vec<u32>>,
    free_lists: Vec<u32>,
    workers: Vec<Option<Worker>>,
    free_workers: Vec<u32>,
    worker_index: HashMap<(u64, u32), u32>,
    counters: [u64; INDEX_COUNTER_NAMES.len()],
    order: Vec<u32>,
    rank: Vec<u32>,
    order_stale: bool,
    stamp: Vec<u32>,
    generation: u32,
    score: Vec<u32>,
    scored: Vec<u32>,
    high: Vec<u32>,
    kept: Vec<u32>,
    keys: Vec<u64>,
    out: Vec<Match>,
    version: u64,
}

impl Default for RadixIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl RadixIndex {
    pub fn new() -> Self {
        RadixIndex {
            runs: vec![Run::fresh(NIL)],
            free_runs: Vec::new(),
            owns: Vec::new(),
            free_owns: Vec::new(),
            edges: EdgeTable::new(),
            kid_lists: Vec::new(),
            free_lists: Vec::new(),
            workers: Vec::new(),
            free_workers: Vec::new(),
            worker_index: HashMap::new(),
            counters: [0; INDEX_COUNTER_NAMES.len()],
            order: Vec::new(),
            rank: Vec::new(),
            order_stale: false,
            stamp: Vec::new(),
            generation: 0,
            score: Vec::new(),
            scored: Vec::new(),
            high: Vec::new(),
            kept: Vec::new(),
            keys: Vec::new(),
            out: Vec::new(),
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
    fn child(&self, run: u32, key: u64) -> Option<u32> {
        let kids = self.runs[run as usize].kids;
        if kids == NIL {
            None
        } else if kids & MANY != 0 {
            self.edges.get(run, key)
        } else if self.runs[kids as usize].key(0) == key {
            Some(kids)
        } else {
            None
        }
    }

    fn alloc_run(&mut self, parent: u32) -> u32 {
        match self.free_runs.pop() {
            Some(id) => {
                self.runs[id as usize] = Run::fresh(parent);
                id
            }
            None => {
                self.runs.push(Run::fresh(parent));
                (self.runs.len() - 1) as u32
            }
        }
    }

    fn add_kid(&mut self, parent: u32, child: u32) {
        let key = self.runs[child as usize].key(0);
        self.runs[child as usize].parent = parent;
        let kids = self.runs[parent as usize].kids;
        if kids == NIL {
            self.runs[parent as usize].kids = child;
            return;
        }
        let list = if kids & MANY != 0 {
            kids & !MANY
        } else {
            let list = match self.free_lists.pop() {
                Some(l) => l,
                None => {
                    self.kid_lists.push(Vec::new());
                    (self.kid_lists.len() - 1) as u32
                }
            };
            self.edges
                .insert(parent, self.runs[kids as usize].key(0), kids);
            self.runs[kids as usize].pos = 0;
            self.kid_lists[list as usize].push(kids);
            self.runs[parent as usize].kids = MANY | list;
            list
        };
        self.edges.insert(parent, key, child);
        let l = &mut self.kid_lists[list as usize];
        self.runs[child as usize].pos = l.len() as u32;
        l.push(child);
    }

    fn remove_kid(&mut self, parent: u32, child: u32) {
        let kids = self.runs[parent as usize].kids;
        if kids == NIL {
            return;
        }
        if kids & MANY == 0 {
            if kids == child {
                self.runs[parent as usize].kids = NIL;
            }
            return;
        }
        let list = (kids & !MANY) as usize;
        let key = self.runs[child as usize].key(0);
        if self.edges.remove(parent, key) != Some(child) {
            return;
        }
        let l = &mut self.kid_lists[list];
        let pos = self.runs[child as usize].pos as usize;
        if l.get(pos) != Some(&child) {
            return;
        }
        l.swap_remove(pos);
        if let Some(&moved) = l.get(pos) {
            self.runs[moved as usize].pos = pos as u32;
        }
        if l.len() == 1 {
            let only = l[0];
            self.edges.remove(parent, self.runs[only as usize].key(0));
            self.free_list(list as u32);
            self.runs[only as usize].pos = NIL;
            self.runs[parent as usize].kids = only;
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

    fn kid_ids(&self, run: u32) -> Vec<u32> {
        let kids = self.runs[run as usize].kids;
        if kids == NIL {
            Vec::new()
        } else if kids & MANY != 0 {
            self.kid_lists[(kids & !MANY) as usize].clone()
        } else {
            vec![kids]
        }
    }

    /// Takes all children off `run` (they keep their parent field for the caller to set).
    fn take_kids(&mut self, run: u32) -> Vec<u32> {
        let kids = self.runs[run as usize].kids;
        let ids = self.kid_ids(run);
        if kids != NIL && kids & MANY != 0 {
            for &c in &ids {
                self.edges.remove(run, self.runs[c as usize].key(0));
            }
            self.free_list(kids & !MANY);
        }
        self.runs[run as usize].kids = NIL;
        for &c in &ids {
            self.runs[c as usize].pos = NIL;
        }
        ids
    }

    fn detach_kids(&mut self, run: u32) {
        for c in self.take_kids(run) {
            self.runs[c as usize].parent = NIL;
        }
    }

    fn new_own(&mut self, hashes: Vec<u64>) -> u32 {
        match self.free_owns.pop() {
            Some(i) => {
                self.owns[i as usize] = hashes;
                i
            }
            None => {
                self.owns.push(hashes);
                (self.owns.len() - 1) as u32
            }
        }
    }

    fn free_own(&mut self, own: u32) {
        if own != CANON {
            self.owns[own as usize] = Vec::new();
            self.free_owns.push(own);
        }
    }

    #[inline]
    fn hash_at(&self, run: u32, e: Entry, p: usize) -> u64 {
        if e.own == CANON {
            self.runs[run as usize].blocks[p][1]
        } else {
            self.owns[e.own as usize][p]
        }
    }

    /// Appends an entry, keeping the counts and the index.
    fn push_entry(&mut self, run: u32, e: Entry, hash0: u64) {
        let r = &mut self.runs[run as usize];
        if !r.has_slot(e.slot) {
            r.count(e.slot, true);
        }
        let i = r.items.len() as u32;
        r.items.push(e);
        r.live += 1;
        r.dirty = true;
        match r.big.as_deref_mut() {
            Some(Big::Regular(m)) => {
                m.insert(e.slot, i);
            }
            Some(Big::Multi { at, per }) => {
                at.insert((e.slot, hash0), i);
                *per.entry(e.slot).or_insert(0) += 1;
            }
            None => {
                if r.items.len() >= BIG {
                    self.index_entries(run);
                }
            }
        }
    }

    /// Builds the entry index of a run (it reached BIG entries, or turned multi while indexed).
    fn index_entries(&mut self, run: u32) {
        let r = &self.runs[run as usize];
        let big = if r.multi {
            let mut at = HashMap::default();
            let mut per: HashMap<u32, u32, MixState> = HashMap::default();
            for (i, e) in r.items.iter().enumerate() {
                if e.slot != TOMB {
                    at.insert((e.slot, self.hash_at(run, *e, 0)), i as u32);
                    *per.entry(e.slot).or_insert(0) += 1;
                }
            }
            Big::Multi { at, per }
        } else {
            Big::Regular(
                r.items
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (e.slot, i as u32))
                    .collect(),
            )
        };
        self.runs[run as usize].big = Some(Box::new(big));
    }

    /// Removes entry `i` of a run (its own hashes are the caller's).
    fn remove_entry(&mut self, run: u32, i: usize, hash0: u64) {
        let r = &mut self.runs[run as usize];
        let slot = r.items[i].slot;
        r.live -= 1;
        r.dirty = true;
        if !r.multi {
            r.items.swap_remove(i);
            if let Some(Big::Regular(m)) = r.big.as_deref_mut() {
                m.remove(&slot);
                if let Some(moved) = r.items.get(i) {
                    m.insert(moved.slot, i as u32);
                }
            }
            r.count(slot, false);
            return;
        }
        let mut compact = false;
        match r.big.as_deref_mut() {
            Some(Big::Multi { at, per }) => {
                at.remove(&(slot, hash0));
                r.items[i].slot = TOMB;
                let left = per.get_mut(&slot).map(|c| {
                    *c -= 1;
                    *c
                });
                if left == Some(0) {
                    per.remove(&slot);
                    r.count(slot, false);
                }
                // more tombs than entries: compact, amortized O(1) per removal
                compact = r.items.len() > 2 * r.live as usize;
            }
            _ => {
                r.items.remove(i);
                if !r.items.iter().any(|e| e.slot == slot) {
                    r.count(slot, false);
                }
            }
        }
        if compact {
            self.runs[run as usize].items.retain(|e| e.slot != TOMB);
            self.index_entries(run);
        }
    }

    /// The entry of (slot, hash at position 0) in a multi run.
    fn multi_entry(&self, run: u32, slot: u32, hash: u64) -> Option<usize> {
        let r = &self.runs[run as usize];
        match r.big.as_deref() {
            Some(Big::Multi { at, .. }) => at.get(&(slot, hash)).map(|&i| i as usize),
            _ => r
                .items
                .iter()
                .position(|e| e.slot == slot && self.hash_at(run, *e, 0) == hash),
        }
    }

    /// Splits `run` before position `at` (0 < at < len): the tail becomes its only child, with the
    /// children and the entries' shares of it; the workers' maps follow the tail.
    fn split(&mut self, run: u32, at: usize) -> u32 {
        let tail = self.alloc_run(run);
        let blocks = self.runs[run as usize].blocks.split_off(at);
        self.runs[run as usize].dirty = true;
        let kids = self.take_kids(run);
        self.runs[tail as usize].blocks = blocks;
        for c in kids {
            self.add_kid(tail, c);
        }
        self.add_kid(run, tail);
        let items = self.runs[run as usize].items.clone();
        for (i, e) in items.into_iter().enumerate() {
            if e.cut as usize <= at {
                continue;
            }
            let own = if e.own == CANON {
                CANON
            } else {
                let rest = self.owns[e.own as usize].split_off(at);
                self.new_own(rest)
            };
            self.runs[run as usize].items[i].cut = at as u32;
            self.runs[run as usize].dirty = true;
            let te = Entry {
                slot: e.slot,
                cut: e.cut - at as u32,
                own,
            };
            let h0 = self.hash_at(tail, te, 0);
            self.push_entry(tail, te, h0);
            for p in 0..te.cut as usize {
                let h = self.hash_at(tail, te, p);
                self.worker(e.slot).blocks.insert(h, loc(tail, p as u32));
            }
        }
        tail
    }

    /// Cuts a run to its first `len` positions (nobody holds the rest): its children are detached.
    fn truncate(&mut self, run: u32, len: usize) {
        self.runs[run as usize].blocks.truncate(len);
        self.runs[run as usize].dirty = true;
        self.detach_kids(run);
    }

    /// A run without entries leaves the tree; its children are detached.
    fn drop_run(&mut self, run: u32) {
        let parent = self.runs[run as usize].parent;
        if parent != NIL {
            self.remove_kid(parent, run);
        }
        self.detach_kids(run);
        self.runs[run as usize] = Run::fresh(NIL);
        self.free_runs.push(run);
    }

    /// After an entry of `run` shrank or went: positions nobody holds are cut off.
    fn settle(&mut self, run: u32) {
        let r = &self.runs[run as usize];
        let len = r.blocks.len();
        // usually some other entry still covers the whole run: found without a full scan
        if !r.multi && r.items.iter().any(|e| e.cut as usize == len) {
            return;
        }
        let max = r.max_cut() as usize;
        if max == 0 {
            self.drop_run(run);
        } else if max < len {
            self.truncate(run, max);
        }
    }

    // --------------------------------------------------------------------------------------------
    // holding

    /// The position after `cur` (None: the root) along tokens hash `key`, created with canonical
    /// hash `hash` if missing.
    fn next_pos(&mut self, cur: Option<(u32, u32)>, slot: u32, key: u64, hash: u64) -> (u32, u32) {
        let parent = match cur {
            None => ROOT,
            Some((run, p)) => {
                let len = self.runs[run as usize].blocks.len();
                let next = p as usize + 1;
                if next < len {
                    if self.runs[run as usize].key(next) == key {
                        return (run, next as u32);
                    }
                    // diverging inside the run: it ends here, the rest becomes a child
                    self.split(run, next);
                    run
                } else {
                    let r = &self.runs[run as usize];
                    let extend = r.kids == NIL
                        && !r.multi
                        && r.entry_of(slot)
                            .is_some_and(|i| r.items[i].cut as usize == len);
                    if extend {
                        // a longer store along a leaf grows it in place
                        self.runs[run as usize].blocks.push([key, hash]);
                        self.runs[run as usize].dirty = true;
                        return (run, len as u32);
                    }
                    run
                }
            }
        };
        if let Some(c) = self.child(parent, key) {
            return (c, 0);
        }
        let c = self.alloc_run(parent);
        self.runs[c as usize].blocks.push([key, hash]);
        self.add_kid(parent, c);
        (c, 0)
    }

    /// Puts (slot, hash) on position `p` of `run`; returns where it is (a split may move it).
    /// `hint`: the worker's entry index in `run` if known (the previous block's).
    fn hold(
        &mut self,
        run: u32,
        p: u32,
        slot: u32,
        hash: u64,
        hint: (u32, u32),
    ) -> (u32, u32, u32) {
        if self.runs[run as usize].multi {
            if self.multi_entry(run, slot, hash).is_none() {
                let own = self.own_for(run, 0, hash);
                self.push_entry(run, Entry { slot, cut: 1, own }, hash);
            }
            return (run, 0, NIL);
        }
        let r = &self.runs[run as usize];
        let found = if hint.0 == run && r.items.get(hint.1 as usize).is_some_and(|e| e.slot == slot)
        {
            Some(hint.1 as usize)
        } else {
            r.entry_of(slot)
        };
        match found {
            None => {
                let run = if p > 0 {
                    self.split(run, p as usize)
                } else {
                    run
                };
                let own = self.own_for(run, 0, hash);
                self.push_entry(run, Entry { slot, cut: 1, own }, hash);
                (run, 0, self.runs[run as usize].items.len() as u32 - 1)
            }
            Some(i) => {
                let e = self.runs[run as usize].items[i];
                if e.cut == p {
                    let canon = self.runs[run as usize].blocks[p as usize][1];
                    if e.own != CANON {
                        self.owns[e.own as usize].push(hash);
                    } else if canon != hash {
                        let mut v: Vec<u64> = self.runs[run as usize].blocks[..p as usize]
                            .iter()
                            .map(|b| b[1])
                            .collect();
                        v.push(hash);
                        let own = self.new_own(v);
                        self.runs[run as usize].items[i].own = own;
                    }
                    self.runs[run as usize].items[i].cut += 1;
                    self.runs[run as usize].dirty = true;
                    (run, p, i as u32)
                } else if e.cut > p {
                    if self.hash_at(run, e, p as usize) == hash {
                        return (run, p, i as u32);
                    }
                    // a second hash of this worker here: the position gets a run of its own
                    let len = self.runs[run as usize].blocks.len();
                    if (p as usize) + 1 < len {
                        self.split(run, p as usize + 1);
                    }
                    let one = if p > 0 {
                        self.split(run, p as usize)
                    } else {
                        run
                    };
                    self.make_multi(one);
                    let own = self.own_for(one, 0, hash);
                    self.push_entry(one, Entry { slot, cut: 1, own }, hash);
                    (one, 0, NIL)
                } else {
                    // not reached: the worker holds the position before (a parent it holds)
                    let tail = self.split(run, p as usize);
                    let own = self.own_for(tail, 0, hash);
                    self.push_entry(tail, Entry { slot, cut: 1, own }, hash);
                    (tail, 0, self.runs[tail as usize].items.len() as u32 - 1)
                }
            }
        }
    }

    fn own_for(&mut self, run: u32, p: usize, hash: u64) -> u32 {
        if self.runs[run as usize].blocks[p][1] == hash {
            CANON
        } else {
            self.new_own(vec![hash])
        }
    }

    fn make_multi(&mut self, run: u32) {
        let r = &mut self.runs[run as usize];
        if r.multi {
            return;
        }
        r.multi = true;
        if r.big.is_some() {
            self.index_entries(run);
        }
    }

    /// Takes (slot, hash) off position `p` of `run`.
    fn leave(&mut self, run: u32, p: u32, slot: u32, hash: u64) {
        if self.runs[run as usize].multi {
            if let Some(i) = self.multi_entry(run, slot, hash) {
                let own = self.runs[run as usize].items[i].own;
                self.remove_entry(run, i, hash);
                self.free_own(own);
                self.settle(run);
            }
            return;
        }
        let Some(i) = self.runs[run as usize].entry_of(slot) else {
            return;
        };
        let e = self.runs[run as usize].items[i];
        if e.cut <= p || self.hash_at(run, e, p as usize) != hash {
            return;
        }
        if p + 1 < e.cut {
            // an inner position: the rest of the worker's share moves to a new run
            self.split(run, p as usize + 1);
        }
        let r = &mut self.runs[run as usize];
        r.dirty = true;
        let e = &mut r.items[i];
        e.cut = p;
        let own = e.own;
        if own != CANON {
            self.owns[own as usize].truncate(p as usize);
        }
        if p == 0 {
            self.remove_entry(run, i, hash);
            self.free_own(own);
        }
        self.settle(run);
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
            blocks: HashMap::default(),
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

    fn clear_slot(&mut self, slot: u32) {
        // leaves last positions first, so that no leave splits a run
        let mut blocks: Vec<(u64, u64)> = std::mem::take(&mut self.worker(slot).blocks)
            .into_iter()
            .map(|(h, l)| (l, h))
            .collect();
        blocks.sort_unstable_by(|a, b| b.cmp(a));
        for (l, h) in blocks {
            let (run, p) = unloc(l);
            self.leave(run, p, slot, h);
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
        if repeats(blocks, parent_hash) {
            self.counters[C_INVALID_SEQUENCE] += 1;
            return ApplyOutcome::InvalidBlockSequence;
        }
        let mut cur = match parent_hash {
            None => None,
            Some(p) => match self.worker(slot).blocks.get(&p) {
                Some(&l) => Some(unloc(l)),
                None => {
                    self.counters[C_PARENT_NOT_FOUND] += 1;
                    return ApplyOutcome::ParentNotFound;
                }
            },
        };
        // the worker's entry in the run of the previous block (most blocks follow it in one run)
        let mut hint = (NIL, 0u32);
        for b in blocks {
            let (run, p) = self.next_pos(cur, slot, b.tokens_hash, b.block_hash);
            let (hrun, hp, entry) = self.hold(run, p, slot, b.block_hash, hint);
            hint = (hrun, entry);
            let at = (hrun, hp);
            let here = loc(at.0, at.1);
            match self.worker(slot).blocks.insert(b.block_hash, here) {
                Some(old) if old != here => {
                    // the hash moved: it leaves its old place, which may split runs (the map
                    // follows), so where it is now is read back
                    let (orun, op) = unloc(old);
                    self.leave(orun, op, slot, b.block_hash);
                    let now = self.worker(slot).blocks[&b.block_hash];
                    cur = Some(unloc(now));
                    hint = (NIL, 0);
                }
                _ => cur = Some(at),
            }
        }
        self.counters[C_STORED] += 1;
        self.counters[C_BLOCKS_STORED] += blocks.len() as u64;
        ApplyOutcome::Applied
    }

    fn remove(&mut self, slot: u32, hashes: &[u64]) -> ApplyOutcome {
        let mut missing = 0u64;
        let mut found: Vec<(u64, u64)> = Vec::with_capacity(hashes.len());
        for &h in hashes {
            match self.worker(slot).blocks.remove(&h) {
                Some(l) => found.push((l, h)),
                None => missing += 1,
            }
        }
        // The outcome does not depend on the order of the removals, so they go last position
        // first: a run loses its end each time instead of splitting (a chain removed root first
        // would otherwise move its whole tail once per block). A split only moves positions after
        // the one left, which this order has already handled.
        found.sort_unstable_by(|a, b| b.cmp(a));
        for (l, h) in found {
            let (run, p) = unloc(l);
            self.leave(run, p, slot, h);
            self.counters[C_BLOCKS_REMOVED] += 1;
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
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        self.walk(query, early_exit, &mut out);
        self.out = out;
        &self.out
    }

    #[inline]
    fn drop_out(&mut self, slot: u32, score: u32, scored: &mut Vec<u32>) {
        self.score[slot as usize] = score;
        scored.push(slot);
    }

    fn walk(&mut self, query: &[u64], early_exit: bool, out: &mut Vec<Match>) {
        let Some(&first) = query.first() else {
            return;
        };
        let Some(mut run) = self.child(ROOT, first) else {
            return;
        };
        let n_slots = self.workers.len();
        if self.stamp.len() < n_slots {
            self.stamp.resize(n_slots, 0);
            self.score.resize(n_slots, 0);
        }
        let mut high = std::mem::take(&mut self.high);
        let mut kept = std::mem::take(&mut self.kept);
        let mut scored = std::mem::take(&mut self.scored);
        high.clear();
        scored.clear();
        // the active set: slots < LOW as a mask, the others listed
        let mut low = self.runs[run as usize].low;
        if self.runs[run as usize].high > 0 {
            high.extend(self.runs[run as usize].slots().filter(|&s| s >= LOW));
        }
        let mut depth = 0u32;
        loop {
            let r = &self.runs[run as usize];
            let len = r.blocks.len();
            let rest = &query[depth as usize..];
            let lim = len.min(rest.len());
            let mut m = 1;
            while m < lim && r.blocks[m][0] == rest[m] {
                m += 1;
            }
            // where the walk leaves this run: the end of the match, or with early exit the
            // position after which one worker is left
            let mut stop = m;
            if r.dirty && !r.multi {
                let r = &mut self.runs[run as usize];
                r.full = r
                    .items
                    .iter()
                    .filter(|e| e.slot < LOW && e.cut as usize == len)
                    .fold(0, |acc, e| acc | 1 << e.slot);
                r.dirty = false;
            }
            let r = &self.runs[run as usize];
            // when the whole run matched and every active worker covers it, nobody drops inside
            let all_full = m == len && high.is_empty() && low & !r.full == 0;
            if !r.multi && (early_exit || (m > 1 && !all_full)) {
                let (mut c1, mut c2) = (0u32, 0u32);
                for e in r.items.iter().filter(|_| early_exit) {
                    let active = if e.slot < LOW {
                        low >> e.slot & 1 != 0
                    } else {
                        high.contains(&e.slot)
                    };
                    if active {
                        let c = e.cut.min(m as u32);
                        if c > c1 {
                            (c1, c2) = (c, c1);
                        } else if c > c2 {
                            c2 = c;
                        }
                    }
                }
                if early_exit && c2 < c1 {
                    stop = c2 as usize + 1;
                }
                // entries ending before `stop` drop out where they end
                let stop32 = stop as u32;
                let mut i = 0;
                while i < self.runs[run as usize].items.len() {
                    let e = self.runs[run as usize].items[i];
                    i += 1;
                    if e.cut >= stop32 {
                        continue;
                    }
                    if e.slot < LOW {
                        if low >> e.slot & 1 == 0 {
                            continue;
                        }
                        low &= !(1 << e.slot);
                    } else if let Some(k) = high.iter().position(|&s| s == e.slot) {
                        high.swap_remove(k);
                    } else {
                        continue;
                    }
                    self.drop_out(e.slot, depth + e.cut, &mut scored);
                }
            }
            depth += stop as u32;
            if stop < len || depth as usize >= query.len() {
                break;
            }
            if early_exit && low.count_ones() as usize + high.len() == 1 {
                break;
            }
            let Some(next) = self.child(run, query[depth as usize]) else {
                break;
            };
            let n_low = self.runs[next as usize].low;
            let mut lost = low & !n_low;
            low &= n_low;
            while lost != 0 {
                let w = lost.trailing_zeros();
                lost &= lost - 1;
                self.drop_out(w, depth, &mut scored);
            }
            if !high.is_empty() {
                let g = self.next_generation();
                let n = &self.runs[next as usize];
                if n.high > 0 {
                    for s in n.slots() {
                        if s >= LOW {
                            self.stamp[s as usize] = g;
                        }
                    }
                }
                kept.clear();
                for &w in &high {
                    if self.stamp[w as usize] == g {
                        kept.push(w);
                    } else {
                        self.score[w as usize] = depth;
                        scored.push(w);
                    }
                }
                std::mem::swap(&mut high, &mut kept);
            }
            if low == 0 && high.is_empty() {
                break;
            }
            run = next;
        }
        while low != 0 {
            let w = low.trailing_zeros();
            low &= low - 1;
            self.drop_out(w, depth, &mut scored);
        }
        for &w in &high {
            self.score[w as usize] = depth;
            scored.push(w);
        }
        self.emit_in_order(&scored, out);
        self.high = high;
        self.kept = kept;
        self.scored = scored;
    }

    fn emit_in_order(&mut self, scored: &[u32], out: &mut Vec<Match>) {
        if self.order_stale {
            self.order.clear();
            self.order.extend(
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
            self.order.sort_unstable_by_key(key);
            self.rank.resize(self.workers.len(), 0);
            for (i, &s) in self.order.iter().enumerate() {
                self.rank[s as usize] = i as u32;
            }
            self.order_stale = false;
        }
        out.reserve(scored.len());
        if scored.len() * 8 >= self.order.len() {
            for &s in &self.order {
                let score = self.score[s as usize];
                if score != 0 {
                    self.score[s as usize] = 0;
                    out.push(self.match_of(s, score));
                }
            }
        } else {
            let mut keys = std::mem::take(&mut self.keys);
            keys.clear();
            keys.extend(
                scored
                    .iter()
                    .map(|&s| (self.rank[s as usize] as u64) << 32 | s as u64),
            );
            keys.sort_unstable();
            for &k in &keys {
                let s = k as u32;
                out.push(self.match_of(s, self.score[s as usize]));
                self.score[s as usize] = 0;
            }
            self.keys = keys;
        }
    }

    fn next_generation(&mut self) -> u32 {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.stamp.iter_mut().for_each(|s| *s = 0);
            self.generation = 1;
        }
        self.generation
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

    // --------------------------------------------------------------------------------------------
    // the dump

    fn sorted_keys(&self, only_rank: Option<u32>) -> Vec<(u64, u32, u32)> {
        let mut keys: Vec<(u64, u32, u32)> = self
            .workers
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.as_ref().map(|w| (w.worker_id, w.dp_rank, i as u32)))
            .filter(|&(_, rank, _)| only_rank.is_none_or(|r| r == rank))
            .collect();
        keys.sort_unstable();
        keys
    }

    /// The index as stored events of one block each: per worker key in ascending (worker_id,
    /// dp_rank), depth-first from the root through the nodes that hold the worker (children in
    /// ascending tokens hash), one event per hash it holds, parent = its first hash on the parent
    /// node. `only_rank` restricts it to the worker keys of one dp rank.
    pub fn dump(&self, only_rank: Option<u32>) -> Vec<RouterEvent> {
        let mut out = Vec::new();
        let mut c = self.dump_cursor(only_rank);
        while let Ok(Some(e)) = self.dump_next(&mut c) {
            out.push(e);
        }
        out
    }

    /// Pushes the children of `run` held by `slot` so that they pop in ascending key order.
    fn push_kids_holding(
        &self,
        run: u32,
        slot: u32,
        parent_hash: Option<u64>,
        stack: &mut Vec<(u32, Option<u64>)>,
    ) {
        let mut kids: Vec<u32> = self
            .kid_ids(run)
            .into_iter()
            .filter(|&c| self.runs[c as usize].has_slot(slot))
            .collect();
        kids.sort_unstable_by_key(|&c| std::cmp::Reverse(self.runs[c as usize].key(0)));
        stack.extend(kids.into_iter().map(|c| (c, parent_hash)));
    }

    /// Opens a cursor over `dump(only_rank)`.
    pub fn dump_cursor(&self, only_rank: Option<u32>) -> DumpCursor {
        DumpCursor {
            version: self.version,
            keys: self.sorted_keys(only_rank),
            next_key: 0,
            worker_id: 0,
            dp_rank: 0,
            slot: u32::MAX,
            event_id: 0,
            stack: Vec::new(),
            hashes: Vec::new(),
            run: NIL,
            entry: CANON,
            next_pos: 0,
            parent_hash: None,
        }
    }

    /// Whether the cursor's index is unchanged since it was opened.
    pub fn dump_valid(&self, c: &DumpCursor) -> bool {
        c.version == self.version
    }

    fn event(
        c: &DumpCursor,
        parent_hash: Option<u64>,
        block_hash: u64,
        tokens_hash: u64,
    ) -> RouterEvent {
        RouterEvent {
            worker_id: c.worker_id,
            event_id: c.event_id,
            dp_rank: c.dp_rank,
            data: EventData::Stored {
                parent_hash,
                blocks: vec![StoredBlock {
                    block_hash,
                    tokens_hash,
                    mm_extra_info: None,
                }],
            },
        }
    }

    /// The next event of the dump the cursor was opened on (the same events in the same order as
    /// `dump`), `Ok(None)` at the end, `Err(DumpStale)` once this index changed since.
    pub fn dump_next(&self, c: &mut DumpCursor) -> Result<Option<RouterEvent>, DumpStale> {
        if !self.dump_valid(c) {
            return Err(DumpStale);
        }
        loop {
            if c.run != NIL {
                let r = &self.runs[c.run as usize];
                if r.multi {
                    if let Some(h) = c.hashes.pop() {
                        return Ok(Some(Self::event(c, c.parent_hash, h, r.key(0))));
                    }
                } else {
                    let e = r.items[c.entry as usize];
                    let p = c.next_pos as usize;
                    if p < e.cut as usize {
                        let h = self.hash_at(c.run, e, p);
                        let parent = c.parent_hash;
                        c.parent_hash = Some(h);
                        c.next_pos += 1;
                        return Ok(Some(Self::event(c, parent, h, r.key(p))));
                    }
                }
                c.run = NIL;
            }
            if let Some((run, parent_hash)) = c.stack.pop() {
                let r = &self.runs[run as usize];
                let slot = c.slot;
                c.run = run;
                c.parent_hash = parent_hash;
                if r.multi {
                    c.hashes.clear();
                    c.hashes.extend(
                        r.items
                            .iter()
                            .filter(|e| e.slot == slot)
                            .map(|e| self.hash_at(run, *e, 0)),
                    );
                    let first = c.hashes.first().copied();
                    c.hashes.reverse();
                    self.push_kids_holding(run, slot, first, &mut c.stack);
                } else {
                    let i = r.entry_of(slot).expect("a run holding the worker");
                    let e = r.items[i];
                    c.entry = i as u32;
                    c.next_pos = 0;
                    if e.cut as usize == r.blocks.len() {
                        let last = self.hash_at(run, e, e.cut as usize - 1);
                        self.push_kids_holding(run, slot, Some(last), &mut c.stack);
                    }
                }
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

    // --------------------------------------------------------------------------------------------
    // memory

    /// A cheap estimate of the heap bytes held (no walk over runs or maps' contents).
    pub fn approx_bytes(&self) -> usize {
        let entries: usize = self
            .workers
            .iter()
            .flatten()
            .map(|w| w.blocks.capacity())
            .sum();
        self.runs.capacity() * (std::mem::size_of::<Run>() + 64)
            + self.edges.bytes()
            + self.kid_lists.capacity() * 40
            + entries * 20
    }

    /// The heap bytes held by the index: every vector's and map's allocation, as the allocator
    /// sees it (hash maps counted with their control bytes and spare buckets).
    pub fn heap_bytes(&self) -> usize {
        let vec = |cap: usize, size: usize| cap * size;
        let runs = vec(self.runs.capacity(), std::mem::size_of::<Run>())
            + self
                .runs
                .iter()
                .map(|r| {
                    vec(r.blocks.capacity(), 16)
                        + vec(r.items.capacity(), std::mem::size_of::<Entry>())
                        + match r.big.as_deref() {
                            None => 0,
                            Some(Big::Regular(m)) => {
                                std::mem::size_of::<Big>() + map_bytes(m.capacity(), 8)
                            }
                            Some(Big::Multi { at, per }) => {
                                std::mem::size_of::<Big>()
                                    + map_bytes(at.capacity(), 24)
                                    + map_bytes(per.capacity(), 8)
                            }
                        }
                })
                .sum::<usize>();
        let owns = vec(self.owns.capacity(), 24)
            + self.owns.iter().map(|o| o.capacity() * 8).sum::<usize>();
        let kids = self.edges.bytes()
            + vec(self.kid_lists.capacity(), 24)
            + self
                .kid_lists
                .iter()
                .map(|l| l.capacity() * 4)
                .sum::<usize>();
        let workers = vec(
            self.workers.capacity(),
            std::mem::size_of::<Option<Worker>>(),
        ) + self
            .workers
            .iter()
            .flatten()
            .map(|w| map_bytes(w.blocks.capacity(), 16))
            .sum::<usize>()
            + map_bytes(self.worker_index.capacity(), 16);
        let free = 4
            * (self.free_runs.capacity()
                + self.free_owns.capacity()
                + self.free_lists.capacity()
                + self.free_workers.capacity());
        runs + owns + kids + workers + free
    }
}

/// The bytes of a hashbrown table of this capacity with entries of `entry` bytes: its buckets (a
/// power of two, 8/7 of the capacity from 8 on) of entries and control bytes, plus a group of
/// control bytes.
pub(crate) fn map_bytes(capacity: usize, entry: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = if capacity < 8 {
        (capacity + 1).next_power_of_two()
    } else {
        capacity / 7 * 8
    };
    (buckets * entry).next_multiple_of(16) + buckets + 16
}

/// A position in `RadixIndex::dump`'s sequence, read one event at a time by `dump_next`. It holds
/// the worker keys still to go, the depth-first stack of the current one and where it is in the run
/// being written: O(keys + tree depth × fan-out) memory, never the events. It belongs to the index
/// that opened it and is valid until that index changes.
#[derive(Debug, Clone)]
pub struct DumpCursor {
    version: u64,
    keys: Vec<(u64, u32, u32)>,
    next_key: usize,
    worker_id: u64,
    dp_rank: u32,
    slot: u32,
    event_id: u64,
    stack: Vec<(u32, Option<u64>)>,
    /// a multi run's hashes of the worker still to write, last first
    hashes: Vec<u64>,
    /// the run being written (NIL: none), the worker's entry there and the next position
    run: u32,
    entry: u32,
    next_pos: u32,
    parent_hash: Option<u64>,
}
