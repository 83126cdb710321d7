//! A `RadixIndex` that one writer thread updates while any number of reader threads query it, and
//! whose reads never wait for the writer (SPEC 6, concurrent reads): the "left-right" scheme, two
//! copies of the index and a log of the operations between them.
//!
//! - Readers query the *published* copy. A read announces itself in the reader's own counter (odd
//!   while inside), loads which copy is published, and queries it through `&RadixIndex`: no lock, no
//!   allocation (each reader owns a `MatchScratch`), never a wait, whatever the writer does.
//! - The writer applies each operation to the other copy and records it in a log. `publish` (called
//!   by the writer, or automatically every `PublishPolicy::max_ops` operations or once the oldest
//!   unpublished one is `max_delay` old) swaps the copies: new reads go to the copy that has
//!   everything. Before its next operation the writer waits until no reader is still in the copy it
//!   left (readers are out within one query, about a microsecond), then replays the log on it.
//! - A read sees every operation published before it, as one state: never part of an event, never
//!   one dp rank of a removed worker without the other. An operation is seen once published.
//!
//! The cost: two copies of the index in memory (about twice `RadixIndex::heap_bytes`, plus the
//! log: 180.7 bytes per (worker, block) entry against 90.1 for one index in the side-by-side bench),
//! and the writer does every operation twice (once when applied, once in the replay) and copies
//! each event's hashes into the log (there, 2.3-3.4 M blocks/s of CPU against 7.5-8.2 for one index).
//! The waiting is the writer's: a reader preempted inside a query holds up the writer's next
//! operation after a publish, never another reader.
//!
//! A shared index starts empty (`SharedWriter::new`); the writer's calls return what the plain
//! index's would (the outcome of applying to its copy; the replay gives the same).
//!
//! JavaScript (the Node binding, the TypeScript fallback) runs the index on one thread and does not
//! use this.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::index::{ApplyOutcome, Match, MatchScratch, RadixIndex};
use crate::wire::{DataRef, RouterEvent, StoredBlock};

/// When the writer publishes on its own. It also publishes whenever `SharedWriter::publish` is
/// called, which a writer whose stream pauses should do: the delay is only checked when an
/// operation is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishPolicy {
    /// Publish once this many operations are unpublished (0: never on count).
    pub max_ops: usize,
    /// Publish once the oldest unpublished operation is this old (None: never on age).
    pub max_delay: Option<Duration>,
}

impl Default for PublishPolicy {
    /// Every 256 operations or 200 µs, whichever comes first.
    fn default() -> Self {
        PublishPolicy {
            max_ops: 256,
            max_delay: Some(Duration::from_micros(200)),
        }
    }
}

/// One copy and how many operations it holds.
struct Side {
    index: RadixIndex,
    version: u64,
}

/// A reader's counter, on its own cache lines (128 bytes: x86's adjacent-line prefetch pairs 64-byte
/// lines), so that a reader's two increments per read do not slow the other readers.
#[repr(align(128))]
struct ReaderSlot {
    /// Odd while the reader is inside a read; incremented on entry and on exit.
    epoch: AtomicU64,
}

/// `current` alone on its cache lines: readers load it on every read, the writer stores it rarely.
#[repr(align(128))]
struct Current(AtomicUsize);

struct Shared {
    copies: [UnsafeCell<Side>; 2],
    /// The published copy (0 or 1).
    current: Current,
    /// The live readers' counters. Locked when a reader is made or dropped and by the writer when it
    /// waits for readers, never by a read.
    readers: Mutex<Vec<Arc<ReaderSlot>>>,
}

// SAFETY: the copies are the only state not already Sync (UnsafeCell). Readers only make shared
// references to the copy `current` names, and only between the two increments of their counter;
// the writer makes a `&mut` only to the other copy, and only after it saw every reader's counter
// even or changed since the swap (see `SharedWriter::catch_up`), so no `&mut` coexists with another
// reference to the same copy. `RadixIndex` is Send and Sync (asserted below).
unsafe impl Sync for Shared {}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<RadixIndex>();
};

impl Shared {
    /// The copy the writer writes, for changing.
    ///
    /// # Safety
    /// Only the writer calls this, with its `write` (never `current`: they are swapped together in
    /// `publish`), through `&mut SharedWriter` and with no other reference into that copy alive, and
    /// only once no reader can be in it: `SharedWriter::catch_up` saw every reader out of it since
    /// the swap that made it the write copy (new reads go to the other copy).
    #[allow(clippy::mut_from_ref)]
    unsafe fn write_side(&self, write: usize) -> &mut Side {
        unsafe { &mut *self.copies[write].get() }
    }

    /// Runs `f` inside a read of the published copy: no lock, no wait.
    fn read<R>(&self, slot: &ReaderSlot, f: impl FnOnce(&Side) -> R) -> R {
        // SeqCst RMW, then SeqCst load: see `SharedWriter::wait_for_readers`. Only this reader
        // writes its counter (reads take `&mut SharedReader`), so it goes from even to odd here.
        slot.epoch.fetch_add(1, Ordering::SeqCst);
        let _pin = Pin(slot);
        let i = self.current.0.load(Ordering::SeqCst);
        // SAFETY: copy `i` is published: the writer changes it only after this reader's counter
        // moves on (the `Pin` drop, after `f` returns), and `f` cannot keep the reference (its
        // result does not borrow from it).
        f(unsafe { &*self.copies[i].get() })
    }

    fn lock_readers(&self) -> std::sync::MutexGuard<'_, Vec<Arc<ReaderSlot>>> {
        // the list stays valid whatever a panicking holder was doing (a push or a retain)
        self.readers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug, Clone, Copy)]
enum OpKind {
    Stored { parent_hash: Option<u64> },
    Removed,
    Cleared,
    ClearRank,
    RemoveWorker,
    RemoveWorkerDpRank,
}

/// A logged operation; its blocks or hashes are `start..end` of the log's pools.
#[derive(Debug, Clone, Copy)]
struct Op {
    kind: OpKind,
    worker_id: u64,
    event_id: u64,
    dp_rank: u32,
    start: usize,
    end: usize,
}

/// Operations with their blocks and hashes in two pools, so that logging allocates nothing once the
/// pools have grown.
#[derive(Default)]
struct OpLog {
    ops: Vec<Op>,
    blocks: Vec<StoredBlock>,
    hashes: Vec<u64>,
}

impl OpLog {
    fn clear(&mut self) {
        self.ops.clear();
        self.blocks.clear();
        self.hashes.clear();
    }

    fn push(&mut self, kind: OpKind, worker_id: u64, event_id: u64, dp_rank: u32, data: DataRef) {
        let (start, end) = match data {
            DataRef::Stored { blocks, .. } => {
                let start = self.blocks.len();
                // the index does not keep the multimodal info: the copy leaves it out
                self.blocks.extend(blocks.iter().map(|b| StoredBlock {
                    block_hash: b.block_hash,
                    tokens_hash: b.tokens_hash,
                    mm_extra_info: None,
                }));
                (start, self.blocks.len())
            }
            DataRef::Removed(hashes) => {
                let start = self.hashes.len();
                self.hashes.extend_from_slice(hashes);
                (start, self.hashes.len())
            }
            DataRef::Cleared => (0, 0),
        };
        self.ops.push(Op {
            kind,
            worker_id,
            event_id,
            dp_rank,
            start,
            end,
        });
    }

    fn replay(&self, index: &mut RadixIndex) {
        for op in &self.ops {
            apply_op(index, op, &self.blocks, &self.hashes);
        }
    }

    fn heap_bytes(&self) -> usize {
        self.ops.capacity() * std::mem::size_of::<Op>()
            + self.blocks.capacity() * std::mem::size_of::<StoredBlock>()
            + self.hashes.capacity() * 8
    }
}

fn apply_op(
    index: &mut RadixIndex,
    op: &Op,
    blocks: &[StoredBlock],
    hashes: &[u64],
) -> ApplyOutcome {
    let (w, e, r) = (op.worker_id, op.event_id, op.dp_rank);
    match op.kind {
        OpKind::Stored { parent_hash } => index.apply(
            w,
            e,
            r,
            DataRef::Stored {
                parent_hash,
                blocks: &blocks[op.start..op.end],
            },
        ),
        OpKind::Removed => index.apply(w, e, r, DataRef::Removed(&hashes[op.start..op.end])),
        OpKind::Cleared => index.apply(w, e, r, DataRef::Cleared),
        OpKind::ClearRank => index.clear_rank(w, e, r),
        OpKind::RemoveWorker => {
            index.remove_worker(w);
            ApplyOutcome::Applied
        }
        OpKind::RemoveWorkerDpRank => {
            index.remove_worker_dp_rank(w, r);
            ApplyOutcome::Applied
        }
    }
}

/// The writing side: the only handle that changes the index. Not Clone (one writer).
pub struct SharedWriter {
    shared: Arc<Shared>,
    policy: PublishPolicy,
    /// The copy this writer writes: never `current`.
    write: usize,
    /// Operations applied to the write copy since the last publish.
    pending: OpLog,
    /// Operations published since the write copy was last caught up: the copy lacks them until
    /// `catch_up` replays them.
    behind: OpLog,
    /// When the first operation of `pending` was applied.
    pending_since: Option<Instant>,
    /// Operations applied so far, and published so far.
    applied: u64,
    published: u64,
}

impl Default for SharedWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl SharedWriter {
    /// An empty shared index with the default publish policy.
    pub fn new() -> Self {
        Self::with_policy(PublishPolicy::default())
    }

    pub fn with_policy(policy: PublishPolicy) -> Self {
        let copy = || {
            let mut index = RadixIndex::new();
            index.prepare_reads();
            UnsafeCell::new(Side { index, version: 0 })
        };
        SharedWriter {
            shared: Arc::new(Shared {
                copies: [copy(), copy()],
                current: Current(AtomicUsize::new(0)),
                readers: Mutex::new(Vec::new()),
            }),
            policy,
            write: 1,
            pending: OpLog::default(),
            behind: OpLog::default(),
            pending_since: None,
            applied: 0,
            published: 0,
        }
    }

    pub fn policy(&self) -> PublishPolicy {
        self.policy
    }

    /// A new reader (any thread; `SharedReader::clone` makes more).
    pub fn reader(&self) -> SharedReader {
        SharedReader::register(&self.shared)
    }

    /// Operations applied so far (events, clears and removals, whatever their outcome).
    pub fn version(&self) -> u64 {
        self.applied
    }

    /// Operations readers see: the version of the published copy.
    pub fn published_version(&self) -> u64 {
        self.published
    }

    /// The published copy, as readers see it now.
    pub fn published(&self) -> &RadixIndex {
        // SAFETY: the writer writes only the other copy, and only through `&mut self`, which this
        // borrow excludes; readers make only shared references.
        unsafe { &(*self.shared.copies[1 - self.write].get()).index }
    }

    /// Approximate heap bytes of both copies and the log.
    pub fn heap_bytes(&self) -> usize {
        // SAFETY: as in `published`; the write copy is this writer's, borrowed shared here.
        let (a, b) = unsafe {
            (
                &(*self.shared.copies[0].get()).index,
                &(*self.shared.copies[1].get()).index,
            )
        };
        a.heap_bytes() + b.heap_bytes() + self.pending.heap_bytes() + self.behind.heap_bytes()
    }

    pub fn apply_event(&mut self, ev: &RouterEvent) -> ApplyOutcome {
        self.apply(ev.worker_id, ev.event_id, ev.dp_rank, ev.data.as_data_ref())
    }

    /// `RadixIndex::apply`: one event given by parts.
    pub fn apply(
        &mut self,
        worker_id: u64,
        event_id: u64,
        dp_rank: u32,
        data: DataRef,
    ) -> ApplyOutcome {
        let kind = match data {
            DataRef::Stored { parent_hash, .. } => OpKind::Stored { parent_hash },
            DataRef::Removed(_) => OpKind::Removed,
            DataRef::Cleared => OpKind::Cleared,
        };
        self.op(kind, worker_id, event_id, dp_rank, data)
    }

    /// `RadixIndex::clear_rank`: a Dynamo 1.4+ `cleared` of one dp rank.
    pub fn clear_rank(&mut self, worker_id: u64, event_id: u64, dp_rank: u32) -> ApplyOutcome {
        self.op(
            OpKind::ClearRank,
            worker_id,
            event_id,
            dp_rank,
            DataRef::Cleared,
        )
    }

    /// `RadixIndex::remove_worker`: every dp rank of the worker, in one step for readers.
    pub fn remove_worker(&mut self, worker_id: u64) {
        self.op(OpKind::RemoveWorker, worker_id, 0, 0, DataRef::Cleared);
    }

    pub fn remove_worker_dp_rank(&mut self, worker_id: u64, dp_rank: u32) {
        self.op(
            OpKind::RemoveWorkerDpRank,
            worker_id,
            0,
            dp_rank,
            DataRef::Cleared,
        );
    }

    fn op(
        &mut self,
        kind: OpKind,
        worker_id: u64,
        event_id: u64,
        dp_rank: u32,
        data: DataRef,
    ) -> ApplyOutcome {
        self.catch_up();
        self.pending.push(kind, worker_id, event_id, dp_rank, data);
        let log = &self.pending;
        let op = log.ops.last().expect("just pushed");
        // SAFETY: after `catch_up` (see `write_side`).
        let outcome = apply_op(
            unsafe { &mut self.shared.write_side(self.write).index },
            op,
            &log.blocks,
            &log.hashes,
        );
        self.applied += 1;
        let now_due = self.pending.ops.len() >= self.policy.max_ops && self.policy.max_ops > 0;
        let age_due = match self.policy.max_delay {
            None => false,
            Some(d) => {
                let since = *self.pending_since.get_or_insert_with(Instant::now);
                since.elapsed() >= d
            }
        };
        if now_due || age_due {
            self.publish();
        }
        outcome
    }

    /// Makes every operation applied so far visible to new reads (nothing when there is none).
    pub fn publish(&mut self) {
        if self.pending.ops.is_empty() {
            return;
        }
        {
            // SAFETY: the write copy is caught up (`pending` went into it after `catch_up`).
            let side = unsafe { self.shared.write_side(self.write) };
            // readers sort nothing per query: the worker order is made here, by the writer
            side.index.prepare_reads();
            side.version = self.applied;
        }
        // Release (and SeqCst, for the reader's Dekker pairing below): a reader that loads the new
        // value sees every write the writer made to that copy before this store.
        self.shared.current.0.store(self.write, Ordering::SeqCst);
        self.write = 1 - self.write;
        self.published = self.applied;
        std::mem::swap(&mut self.pending, &mut self.behind);
        self.pending.clear();
        self.pending_since = None;
    }

    /// Brings the other copy up to date now: waits until no reader is in it, then replays the
    /// operations it lacks (the next change does this otherwise). After `publish` and this, both
    /// copies hold everything applied, e.g. to measure them.
    pub fn catch_up(&mut self) {
        if self.behind.ops.is_empty() {
            return;
        }
        self.wait_for_readers();
        // SAFETY: no reader is in the write copy any more (`wait_for_readers`).
        self.behind
            .replay(unsafe { &mut self.shared.write_side(self.write).index });
        self.behind.clear();
    }

    /// Returns once every reader that could have loaded the old `current` is out of its read.
    ///
    /// Why this suffices (a Dekker pairing, all four accesses SeqCst, so in one total order): a
    /// reader increments its counter (to odd), then loads `current`; the writer stored `current`,
    /// then loads each counter. If the writer's load sees the counter even (from before the
    /// reader's increment), the increment comes after that load in the total order, so after the
    /// store of `current`, and the reader's load of `current`, later still, sees the new copy. If the
    /// writer sees it odd, it waits for any change: that reader's read has ended (its closing
    /// increment is a Release, and the load here that sees it an Acquire, so all of its reads of
    /// the copy happen before the writer's writes). A reader registered after the scan reads only
    /// after its registration, so after the store.
    fn wait_for_readers(&self) {
        let readers = self.shared.lock_readers();
        for slot in readers.iter() {
            let seen = slot.epoch.load(Ordering::SeqCst);
            if seen % 2 == 0 {
                continue;
            }
            let mut spins = 0u32;
            while slot.epoch.load(Ordering::SeqCst) == seen {
                if spins < 1024 {
                    spins += 1;
                    std::hint::spin_loop();
                } else {
                    // the reader was preempted inside a query: let it run
                    std::thread::yield_now();
                }
            }
        }
    }
}

/// A reading side: queries the published copy, never waiting. Clone for another thread (each clone
/// has its own counter and scratch); reads take `&mut self`, so one reader is never in two reads.
pub struct SharedReader {
    shared: Arc<Shared>,
    slot: Arc<ReaderSlot>,
    scratch: MatchScratch,
    /// The version of the copy the last read saw.
    version: u64,
}

impl SharedReader {
    fn register(shared: &Arc<Shared>) -> Self {
        let slot = Arc::new(ReaderSlot {
            epoch: AtomicU64::new(0),
        });
        shared.lock_readers().push(slot.clone());
        SharedReader {
            shared: shared.clone(),
            slot,
            scratch: MatchScratch::new(),
            version: 0,
        }
    }

    /// `f` on the published copy and its version (the number of operations it holds). The copy
    /// does not change during `f`, and the writer waits for `f` to return before it changes
    /// that copy after its next publish: keep `f` short.
    pub fn read<R>(&mut self, f: impl FnOnce(&RadixIndex, u64) -> R) -> R {
        let (r, version) = self.shared.read(&self.slot, |side| {
            (f(&side.index, side.version), side.version)
        });
        self.version = version;
        r
    }

    /// `RadixIndex::find_matches` on the published copy, into this reader's scratch (no allocation
    /// once it has grown); `version` tells which state answered.
    pub fn find_matches(&mut self, query: &[u64], early_exit: bool) -> &[Match] {
        let scratch = &mut self.scratch;
        self.version = self.shared.read(&self.slot, |side| {
            side.index.find_matches_with(query, early_exit, scratch);
            side.version
        });
        self.scratch.matches()
    }

    /// The version (operations published) of the copy the last read saw.
    pub fn version(&self) -> u64 {
        self.version
    }
}

/// A read in progress: ends it when dropped (also when the read panics, so that the writer is not
/// left waiting).
struct Pin<'a>(&'a ReaderSlot);

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        // Release: the reads of the copy happen before the writer's Acquire (SeqCst) load that
        // sees this value, so before its writes to the copy.
        self.0.epoch.fetch_add(1, Ordering::Release);
    }
}

impl Clone for SharedReader {
    fn clone(&self) -> Self {
        SharedReader::register(&self.shared)
    }
}

impl Drop for SharedReader {
    fn drop(&mut self) {
        let slot = &self.slot;
        self.shared.lock_readers().retain(|s| !Arc::ptr_eq(s, slot));
    }
}
