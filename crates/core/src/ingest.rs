//! The per-publisher ingest state (SPEC 3): one call turns one engine batch (or one manual API call)
//! into the encoded outgoing payloads, assigning per-rank event ids, applying the reset rule, splitting
//! large events, and counting every rejection.

use std::collections::{HashMap, HashSet};

use crate::convert::{
    check_store_with, convert_event_wire, Converted, GroupTable, Reason, SaltChain, Store,
    StoreHashing, Wire, REASON_COUNT,
};
use crate::discovery::MAX_PUBLISHER_ID;
use crate::engine::decode_batch;
use crate::index::MixState;
use crate::local::LocalIndexer;
use crate::msgpack::Writer;
use crate::wire::{
    write_envelope, write_event_json, write_event_msgpack, write_event_msgpack_meta,
    BlockExtraInfo, DataRef, EventMeta, StorageTier, StoredBlock, KV_EVENTS_TOPIC,
};

/// `dynamo-1.4`: at most this many events per envelope (Dynamo 1.6.1's event-plane batch).
pub const MAX_EVENTS_PER_ENVELOPE: usize = 128;
/// `dynamo-1.4`: at most this many blocks per envelope; one larger event goes alone.
pub const MAX_BLOCKS_PER_ENVELOPE: usize = 8192;
/// `dynamo-1.4`: adjacent events are coalesced up to this many blocks (Dynamo 1.6.1's default).
pub const MAX_COALESCED_BLOCKS: usize = 128;

/// A store of more blocks is emitted as chained events of at most this many blocks.
pub const MAX_BLOCKS_PER_STORED: usize = 1024;
/// A remove of more hashes is emitted as consecutive events of at most this many.
pub const MAX_HASHES_PER_REMOVED: usize = 4096;
/// Truncation warnings per publisher.
pub const MAX_TRUNCATION_WARNINGS: u32 = 3;
pub const DEFAULT_MAX_DP_RANKS: u32 = 64;
/// The live set of a rank (kept for the reset rule) stops growing here, so an engine that never
/// reports evictions cannot grow memory without bound (32 MiB of hashes per rank at most). Blocks
/// past it are counted `untracked_blocks` and a warning is raised once per publisher; a later reset
/// of that rank cannot list them.
pub const MAX_LIVE_BLOCKS_PER_RANK: usize = 1 << 22;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// msgpack RouterEvent inside the msgpack envelope (core NATS).
    EventPlane,
    /// RouterEvent JSON (JetStream).
    JetStream,
}

#[derive(Debug, Clone)]
pub struct IngestorConfig {
    pub kv_block_size: u32,
    pub worker_id: u64,
    pub mode: Mode,
    pub max_dp_ranks: u32,
    /// Exactly these ranks are accepted (overrides `max_dp_ranks`).
    pub dp_ranks: Option<Vec<u32>>,
    /// Keep a local indexer with this many events buffered per dp rank (None: no local indexer).
    pub local_indexer: Option<usize>,
    /// The router wire (SPEC 5 / 5b).
    pub wire: Wire,
    /// `dynamo-1.4`: fixed publisher ids per dp rank (each 1..=2^53-1); other ranks derive theirs
    /// from `publisher_seed`.
    pub publisher_ids: Vec<(u32, u64)>,
    /// `dynamo-1.4`: the seed of the ranks' publisher ids (random per Ingestor incarnation).
    pub publisher_seed: u64,
}

impl IngestorConfig {
    /// A `dynamo-1.0` event-plane configuration with no local indexer.
    pub fn new(kv_block_size: u32, worker_id: u64) -> Self {
        IngestorConfig {
            kv_block_size,
            worker_id,
            mode: Mode::EventPlane,
            max_dp_ranks: DEFAULT_MAX_DP_RANKS,
            dp_ranks: None,
            local_indexer: None,
            wire: Wire::Dynamo10,
            publisher_ids: Vec::new(),
            publisher_seed: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    KvBlockSize,
    MaxDpRanks,
    DpRanks,
    /// `dynamo-1.4` has no JetStream mode.
    WireMode,
    /// A fixed publisher id outside 1..=2^53-1, or two for one rank.
    PublisherId,
}

/// splitmix64: the publisher ids of a seed.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The publisher id a seed gives a rank: 1..=2^53-1, the same for a seed and rank every time.
pub fn derived_publisher_id(seed: u64, rank: u32) -> u64 {
    let id = mix64(seed ^ mix64(rank as u64)) & MAX_PUBLISHER_ID;
    id.max(1)
}

/// Counter names, in the order of `Ingestor::counters()` (the same list as the TS binding).
pub const COUNTER_NAMES: [&str; 21] = [
    "batches",
    "events_in",
    "emitted_stored",
    "emitted_removed",
    "emitted_cleared",
    "blocks_stored",
    "blocks_removed",
    "truncated_stores",
    "resets",
    "payload_bytes",
    "untracked_blocks", // stored blocks not added to a full live set (see MAX_LIVE_BLOCKS_PER_RANK)
    "rejected_malformed",
    "rejected_invalid",
    "rejected_unknown_type",
    "rejected_filtered_tier",
    "rejected_filtered_group",
    "rejected_empty",
    "rejected_self_reference",
    "rejected_block_size",
    "rejected_dp_rank",
    "rejected_ambiguous_salt",
];
const C_BATCHES: usize = 0;
const C_EVENTS_IN: usize = 1;
const C_EMITTED_STORED: usize = 2;
const C_EMITTED_REMOVED: usize = 3;
const C_EMITTED_CLEARED: usize = 4;
const C_BLOCKS_STORED: usize = 5;
const C_BLOCKS_REMOVED: usize = 6;
const C_TRUNCATED: usize = 7;
const C_RESETS: usize = 8;
const C_PAYLOAD_BYTES: usize = 9;
const C_UNTRACKED: usize = 10;
const C_REJECTED: usize = 11;

pub type LiveSet = HashSet<u64, MixState>;

type RefCounts = HashMap<u64, u32, MixState>;

struct RankState {
    rank: u32,
    next_id: u64,
    /// Block hashes published as stored and not yet removed (for the reset rule of `dynamo-1.0`).
    live: LiveSet,
    groups: GroupTable,
    /// `dynamo-1.4`: the envelope sequence of this rank's publisher.
    sequence: u64,
    /// `dynamo-1.4`: stores minus removes per block hash and storage tier (Dynamo 1.6.1's
    /// refcount dedup: a remove passes when its count reaches 0, or when the hash is not counted).
    refcounts: [RefCounts; 4],
    /// `dynamo-1.4`: the cache salt each device or host-pinned block hash was stored under.
    salts: SaltChain,
}

impl RankState {
    fn new(rank: u32, wire: Wire) -> Self {
        RankState {
            rank,
            next_id: if wire == Wire::Dynamo14 { 1 } else { 0 },
            live: LiveSet::default(),
            groups: GroupTable::default(),
            sequence: 0,
            refcounts: Default::default(),
            salts: SaltChain::default(),
        }
    }
}

/// `dynamo-1.4`: one event on its way out (coalesced, not yet numbered).
enum Ev14 {
    Stored {
        parent_hash: Option<u64>,
        blocks: Vec<StoredBlock>,
    },
    Removed(Vec<u64>),
    Cleared,
}

impl Ev14 {
    fn blocks(&self) -> usize {
        match self {
            Ev14::Stored { blocks, .. } => blocks.len(),
            Ev14::Removed(h) => h.len(),
            Ev14::Cleared => 0,
        }
    }

    fn data(&self) -> DataRef<'_> {
        match self {
            Ev14::Stored {
                parent_hash,
                blocks,
            } => DataRef::Stored {
                parent_hash: *parent_hash,
                blocks,
            },
            Ev14::Removed(h) => DataRef::Removed(h),
            Ev14::Cleared => DataRef::Cleared,
        }
    }
}

/// The packed result of one call being built (layout documented in ts/core/binding.ts): `body` starts
/// with the OUT_HEADER_BYTES header, filled in at the end, followed by the payloads; the payload lengths are
/// appended after them.
struct Out {
    /// None: the batch was malformed.
    dp_rank: Option<u32>,
    /// The clock for the envelopes' published_at.
    now_ms: u64,
    first_id: Option<u64>,
    /// The envelope sequence of the first payload (event-plane modes).
    first_sequence: Option<u64>,
    rejected: [u32; REASON_COUNT],
    lens: Vec<u32>,
    body: Vec<u8>,
}

/// Where the packed output's firstSequence sits: after the rejected counts.
const SEQUENCE_AT: usize = 24 + 4 * REASON_COUNT;
pub const OUT_HEADER_BYTES: usize = SEQUENCE_AT + 8;

/// A decoded view of a packed output (tests, benches and Rust callers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub dp_rank: Option<u32>,
    pub first_event_id: Option<u64>,
    /// The envelope sequence of the first payload.
    pub first_sequence: Option<u64>,
    /// The warnings raised by the call that produced the output.
    pub warnings: Vec<String>,
    pub rejected: [u32; REASON_COUNT],
    pub payloads: Vec<Vec<u8>>,
}

/// Reads a packed output (layout in ts/core/binding.ts). Panics on bytes that are not one: for
/// callers holding an output of this module.
pub fn unpack(out: &[u8]) -> Unpacked {
    let u32_at = |i: usize| u32::from_le_bytes(out[i..i + 4].try_into().unwrap());
    let n = u32_at(0) as usize;
    let rank = u32_at(4);
    let flags = u32_at(8);
    let warnings_len = u32_at(12) as usize;
    let mut rejected = [0u32; REASON_COUNT];
    for (i, r) in rejected.iter_mut().enumerate() {
        *r = u32_at(24 + 4 * i);
    }
    let lens_at = out.len() - 4 * n;
    let mut at = OUT_HEADER_BYTES;
    let payloads = (0..n)
        .map(|i| {
            let len = u32_at(lens_at + 4 * i) as usize;
            at += len;
            out[at - len..at].to_vec()
        })
        .collect();
    let mut warnings = Vec::new();
    let warnings_end = at + warnings_len;
    while at < warnings_end {
        let len = u32_at(at) as usize;
        warnings.push(String::from_utf8_lossy(&out[at + 4..at + 4 + len]).into_owned());
        at += 4 + len;
    }
    Unpacked {
        dp_rank: (flags & 4 != 0).then_some(rank),
        first_event_id: (flags & 1 != 0)
            .then(|| u64::from_le_bytes(out[16..24].try_into().unwrap())),
        first_sequence: (flags & 16 != 0)
            .then(|| u64::from_le_bytes(out[SEQUENCE_AT..OUT_HEADER_BYTES].try_into().unwrap())),
        warnings,
        rejected,
        payloads,
    }
}

pub struct Ingestor {
    kv_block_size: u32,
    worker_id: u64,
    mode: Mode,
    wire: Wire,
    publisher_ids: HashMap<u32, u64>,
    publisher_seed: u64,
    /// `dynamo-1.4`: the event being coalesced.
    pending: Option<(StorageTier, Ev14)>,
    /// `dynamo-1.4`: the call's numbered events, encoded into envelopes at its end.
    emitted: Vec<(StorageTier, u64, Ev14)>,
    max_dp_ranks: usize,
    configured: Option<Vec<u32>>,
    ranks: Vec<RankState>,
    rank_index: HashMap<u32, usize>,
    sequence: u64,
    counters: [u64; COUNTER_NAMES.len()],
    warnings: Vec<String>,
    warnings_given: u32,
    live_overflow_warned: bool,
    hash_scratch: Vec<u8>,
    event_scratch: Vec<u8>,
    /// Buffers reused across calls so the hot path does not allocate its output.
    spare_body: Vec<u8>,
    spare_lens: Vec<u32>,
    /// Every emitted event is applied and buffered here, in the same call.
    local: Option<LocalIndexer>,
}

impl Ingestor {
    pub fn new(cfg: IngestorConfig) -> Result<Self, ConfigError> {
        if cfg.kv_block_size == 0 {
            return Err(ConfigError::KvBlockSize);
        }
        if cfg.max_dp_ranks == 0 && cfg.dp_ranks.is_none() {
            return Err(ConfigError::MaxDpRanks);
        }
        if cfg.wire == Wire::Dynamo14 && cfg.mode == Mode::JetStream {
            return Err(ConfigError::WireMode);
        }
        let mut publisher_ids = HashMap::new();
        for &(rank, id) in &cfg.publisher_ids {
            if id == 0 || id > MAX_PUBLISHER_ID || publisher_ids.insert(rank, id).is_some() {
                return Err(ConfigError::PublisherId);
            }
        }
        let mut ing = Ingestor {
            kv_block_size: cfg.kv_block_size,
            worker_id: cfg.worker_id,
            mode: cfg.mode,
            wire: cfg.wire,
            publisher_ids,
            publisher_seed: cfg.publisher_seed,
            pending: None,
            emitted: Vec::new(),
            max_dp_ranks: cfg.max_dp_ranks as usize,
            configured: None,
            ranks: Vec::new(),
            rank_index: HashMap::new(),
            sequence: 0,
            counters: [0; COUNTER_NAMES.len()],
            warnings: Vec::new(),
            warnings_given: 0,
            live_overflow_warned: false,
            hash_scratch: Vec::new(),
            event_scratch: Vec::new(),
            spare_body: Vec::new(),
            spare_lens: Vec::new(),
            local: cfg.local_indexer.map(LocalIndexer::new),
        };
        if let Some(ranks) = cfg.dp_ranks {
            let distinct: HashSet<u32> = ranks.iter().copied().collect();
            if ranks.is_empty() || distinct.len() != ranks.len() {
                return Err(ConfigError::DpRanks);
            }
            for &r in &ranks {
                ing.rank_index.insert(r, ing.ranks.len());
                ing.ranks.push(RankState::new(r, cfg.wire));
                if let Some(local) = ing.local.as_mut() {
                    local.register_rank(r);
                }
            }
            ing.configured = Some(ranks);
        }
        Ok(ing)
    }

    pub fn worker_id(&self) -> u64 {
        self.worker_id
    }

    pub fn wire(&self) -> Wire {
        self.wire
    }

    /// The publisher id of a rank's envelopes: `dynamo-1.4` one per rank (fixed, or derived from
    /// the seed), `dynamo-1.0` the worker id for every rank.
    pub fn publisher_id(&self, rank: u32) -> u64 {
        match self.wire {
            Wire::Dynamo10 => self.worker_id,
            Wire::Dynamo14 => self
                .publisher_ids
                .get(&rank)
                .copied()
                .unwrap_or_else(|| derived_publisher_id(self.publisher_seed, rank)),
        }
    }

    /// A cheap estimate of the heap bytes held (live sets, reused buffers, the local indexer),
    /// O(ranks + workers): what the binding reports to the JavaScript GC.
    pub fn approx_bytes(&self) -> usize {
        // a hash table bucket: its entry and one control byte
        const LIVE_BUCKET: usize = std::mem::size_of::<u64>() + 1;
        const REFCOUNT_BUCKET: usize = std::mem::size_of::<(u64, u32)>() + 1;
        let live: usize = self
            .ranks
            .iter()
            .map(|r| {
                r.live.capacity() * LIVE_BUCKET
                    + r.refcounts
                        .iter()
                        .map(|c| c.capacity() * REFCOUNT_BUCKET)
                        .sum::<usize>()
            })
            .sum();
        live + self.ranks.capacity() * std::mem::size_of::<RankState>()
            + self.spare_body.capacity()
            + self.spare_lens.capacity() * 4
            + self.hash_scratch.capacity()
            + self.event_scratch.capacity()
            + self.local.as_ref().map_or(0, LocalIndexer::approx_bytes)
    }

    pub fn local_indexer(&self) -> Option<&LocalIndexer> {
        self.local.as_ref()
    }

    pub fn local_indexer_mut(&mut self) -> Option<&mut LocalIndexer> {
        self.local.as_mut()
    }

    /// Whether `rank` may be used: seen, configured, or room for one more.
    pub fn rank_allowed(&self, rank: u32) -> bool {
        self.rank_index.contains_key(&rank)
            || (self.configured.is_none() && self.ranks.len() < self.max_dp_ranks)
    }

    fn ensure_rank(&mut self, rank: u32) -> Option<usize> {
        if let Some(&i) = self.rank_index.get(&rank) {
            return Some(i);
        }
        if !self.rank_allowed(rank) {
            return None;
        }
        self.rank_index.insert(rank, self.ranks.len());
        self.ranks.push(RankState::new(rank, self.wire));
        Some(self.ranks.len() - 1)
    }

    pub fn next_event_id(&self, rank: u32) -> u64 {
        let first = if self.wire == Wire::Dynamo14 { 1 } else { 0 };
        self.rank_index
            .get(&rank)
            .map_or(first, |&i| self.ranks[i].next_id)
    }

    pub fn counters(&self) -> &[u64; COUNTER_NAMES.len()] {
        &self.counters
    }

    fn reject(&mut self, out: &mut Out, reason: Reason) {
        out.rejected[reason as usize] += 1;
        self.counters[C_REJECTED + reason as usize] += 1;
    }

    /// Ingests one engine batch into the packed output. Never fails: a malformed batch is a result
    /// with one `malformed`.
    pub fn ingest(&mut self, payload: &[u8], now_ms: u64) -> Vec<u8> {
        let out = self.ingest_out(payload, now_ms);
        self.end(out)
    }

    fn ingest_out(&mut self, payload: &[u8], now_ms: u64) -> Out {
        self.counters[C_BATCHES] += 1;
        let Ok(batch) = decode_batch(payload) else {
            let mut out = self.begin(None, now_ms);
            self.reject(&mut out, Reason::Malformed);
            return out;
        };
        let mut out = self.begin(Some(batch.dp_rank), now_ms);
        let Some(idx) = self.ensure_rank(batch.dp_rank) else {
            self.reject(&mut out, Reason::DpRank);
            return out;
        };
        self.counters[C_EVENTS_IN] +=
            batch.events.len() as u64 + batch.invalid as u64 + batch.unknown_type as u64;
        for _ in 0..batch.invalid {
            self.reject(&mut out, Reason::Invalid);
        }
        for _ in 0..batch.unknown_type {
            self.reject(&mut out, Reason::UnknownType);
        }
        for ev in batch.events {
            let rank = &mut self.ranks[idx];
            match convert_event_wire(
                ev,
                self.kv_block_size,
                &mut rank.groups,
                &mut self.hash_scratch,
                self.wire,
                Some(&mut rank.salts),
            ) {
                Err(reason) => self.reject(&mut out, reason),
                Ok((Converted::Stored(store), tier)) => self.emit_store(&mut out, idx, store, tier),
                Ok((Converted::Removed(hashes), tier)) => {
                    self.emit_removed(&mut out, idx, hashes, tier)
                }
                Ok((Converted::Cleared, _)) => self.reset_rank(&mut out, idx),
            }
        }
        self.finish(&mut out, idx);
        out
    }

    /// Manual API store (SPEC 3 checks 5-7). `rank` must be allowed (the TS layer checks first; an
    /// unallowed rank here is rejected `dp_rank`).
    #[allow(clippy::too_many_arguments)]
    pub fn stored(
        &mut self,
        token_ids: &[u32],
        block_hashes: &[u64],
        block_size: u64,
        parent_hash: Option<u64>,
        lora_name: Option<&str>,
        mm: Option<Vec<Option<BlockExtraInfo>>>,
        rank: u32,
        now_ms: u64,
    ) -> Vec<u8> {
        self.stored_with(
            token_ids,
            block_hashes,
            block_size,
            parent_hash,
            StoreHashing {
                lora_name,
                ..StoreHashing::default()
            },
            mm,
            rank,
            now_ms,
        )
    }

    /// `stored` with Dynamo 1.4+'s hash inputs (cache salt, Eagle); the event is a device one.
    #[allow(clippy::too_many_arguments)]
    pub fn stored_with(
        &mut self,
        token_ids: &[u32],
        block_hashes: &[u64],
        block_size: u64,
        parent_hash: Option<u64>,
        hashing: StoreHashing,
        mm: Option<Vec<Option<BlockExtraInfo>>>,
        rank: u32,
        now_ms: u64,
    ) -> Vec<u8> {
        let mut out = self.begin(Some(rank), now_ms);
        let Some(idx) = self.ensure_rank(rank) else {
            self.reject(&mut out, Reason::DpRank);
            return self.end(out);
        };
        let tokens_le = crate::hash::tokens_le(token_ids);
        match check_store_with(
            block_hashes,
            parent_hash,
            &tokens_le,
            block_size,
            self.kv_block_size,
            hashing,
            mm,
            &mut self.hash_scratch,
        ) {
            Ok(store) => self.emit_store(&mut out, idx, store, StorageTier::Device),
            Err(reason) => self.reject(&mut out, reason),
        }
        self.finish(&mut out, idx);
        self.end(out)
    }

    pub fn removed(&mut self, block_hashes: &[u64], rank: u32, now_ms: u64) -> Vec<u8> {
        let mut out = self.begin(Some(rank), now_ms);
        let Some(idx) = self.ensure_rank(rank) else {
            self.reject(&mut out, Reason::DpRank);
            return self.end(out);
        };
        if block_hashes.is_empty() {
            self.reject(&mut out, Reason::Empty);
        } else {
            self.emit_removed(&mut out, idx, block_hashes.to_vec(), StorageTier::Device);
        }
        self.finish(&mut out, idx);
        self.end(out)
    }

    pub fn cleared(&mut self, rank: u32, now_ms: u64) -> Vec<u8> {
        let mut out = self.begin(Some(rank), now_ms);
        let Some(idx) = self.ensure_rank(rank) else {
            self.reject(&mut out, Reason::DpRank);
            return self.end(out);
        };
        self.reset_rank(&mut out, idx);
        self.finish(&mut out, idx);
        self.end(out)
    }

    fn begin(&mut self, dp_rank: Option<u32>, now_ms: u64) -> Out {
        let mut body = std::mem::take(&mut self.spare_body);
        body.clear();
        body.resize(OUT_HEADER_BYTES, 0);
        let mut lens = std::mem::take(&mut self.spare_lens);
        lens.clear();
        Out {
            dp_rank,
            now_ms,
            first_id: None,
            first_sequence: None,
            rejected: [0; REASON_COUNT],
            lens,
            body,
        }
    }

    /// Fills in the header and appends the call's warnings (each a u32 length and UTF-8 bytes) and
    /// the payload lengths, so that one output carries everything the call produced.
    fn end(&mut self, out: Out) -> Vec<u8> {
        let Out {
            dp_rank,
            first_id,
            first_sequence,
            rejected,
            lens,
            mut body,
            ..
        } = out;
        let payloads_end = body.len();
        for w in self.warnings.drain(..) {
            body.extend_from_slice(&(w.len() as u32).to_le_bytes());
            body.extend_from_slice(w.as_bytes());
        }
        let warnings_len = body.len() - payloads_end;
        let mut h = [0u8; OUT_HEADER_BYTES];
        h[0..4].copy_from_slice(&(lens.len() as u32).to_le_bytes());
        h[4..8].copy_from_slice(&dp_rank.unwrap_or(0).to_le_bytes());
        let flags = first_id.is_some() as u32
            | ((warnings_len > 0) as u32) << 1
            | (dp_rank.is_some() as u32) << 2
            | (rejected.iter().any(|&r| r > 0) as u32) << 3
            | (first_sequence.is_some() as u32) << 4;
        h[8..12].copy_from_slice(&flags.to_le_bytes());
        h[12..16].copy_from_slice(&(warnings_len as u32).to_le_bytes());
        h[16..24].copy_from_slice(&first_id.unwrap_or(0).to_le_bytes());
        for (i, r) in rejected.iter().enumerate() {
            h[24 + 4 * i..28 + 4 * i].copy_from_slice(&r.to_le_bytes());
        }
        h[SEQUENCE_AT..OUT_HEADER_BYTES]
            .copy_from_slice(&first_sequence.unwrap_or(0).to_le_bytes());
        body[..OUT_HEADER_BYTES].copy_from_slice(&h);
        body.reserve(4 * lens.len());
        for l in &lens {
            body.extend_from_slice(&l.to_le_bytes());
        }
        self.spare_lens = lens;
        body
    }

    /// Like `ingest`, but returns a view of a buffer the Ingestor reuses on its next call (no
    /// allocation per call once warm): the binding copies it out, or takes it with `take_packed`.
    pub fn ingest_packed(&mut self, payload: &[u8], now_ms: u64) -> &[u8] {
        let out = self.ingest_out(payload, now_ms);
        self.spare_body = self.end(out);
        &self.spare_body
    }

    /// Hands over the output of the last `ingest_packed` call (empty before the first); the next
    /// call allocates a new buffer.
    pub fn take_packed(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.spare_body)
    }

    fn emit_store(&mut self, out: &mut Out, idx: usize, store: Store, tier: StorageTier) {
        let Store {
            parent_hash,
            blocks,
            truncated,
        } = store;
        if let Some((tokens, kept, hashes)) = truncated {
            self.counters[C_TRUNCATED] += 1;
            if self.warnings_given < MAX_TRUNCATION_WARNINGS {
                self.warnings_given += 1;
                self.warnings.push(format!(
                    "store truncated on dp rank {}: {} token_ids cover {} of {} blocks of {}",
                    self.ranks[idx].rank, tokens, kept, hashes, self.kv_block_size
                ));
            }
        }
        if self.wire == Wire::Dynamo14 {
            self.push14(
                idx,
                tier,
                Ev14::Stored {
                    parent_hash,
                    blocks,
                },
            );
            return;
        }
        let mut parent = parent_hash;
        for chunk in blocks.chunks(MAX_BLOCKS_PER_STORED) {
            self.emit(
                out,
                idx,
                DataRef::Stored {
                    parent_hash: parent,
                    blocks: chunk,
                },
            );
            let live = &mut self.ranks[idx].live;
            let mut untracked = 0;
            for b in chunk {
                if live.len() < MAX_LIVE_BLOCKS_PER_RANK || live.contains(&b.block_hash) {
                    live.insert(b.block_hash);
                } else {
                    untracked += 1;
                }
            }
            if untracked > 0 {
                self.counters[C_UNTRACKED] += untracked;
                if !self.live_overflow_warned {
                    self.live_overflow_warned = true;
                    self.warnings.push(format!(
                        "live block set of dp rank {} is full ({} blocks): further blocks are not tracked, so a reset of this rank cannot remove them from a router",
                        self.ranks[idx].rank, MAX_LIVE_BLOCKS_PER_RANK
                    ));
                }
            }
            self.counters[C_EMITTED_STORED] += 1;
            self.counters[C_BLOCKS_STORED] += chunk.len() as u64;
            parent = chunk.last().map(|b| b.block_hash);
        }
    }

    fn emit_removed(&mut self, out: &mut Out, idx: usize, hashes: Vec<u64>, tier: StorageTier) {
        if self.wire == Wire::Dynamo14 {
            self.push14(idx, tier, Ev14::Removed(hashes));
            return;
        }
        for chunk in hashes.chunks(MAX_HASHES_PER_REMOVED) {
            self.emit(out, idx, DataRef::Removed(chunk));
            let live = &mut self.ranks[idx].live;
            for h in chunk {
                live.remove(h);
            }
            self.counters[C_EMITTED_REMOVED] += 1;
            self.counters[C_BLOCKS_REMOVED] += chunk.len() as u64;
        }
    }

    /// The reset rule (SPEC 3): `cleared` when this rank is the only one the publisher has seen or
    /// been configured with; otherwise removes of the rank's live blocks, because a Dynamo router
    /// applies `cleared` to every rank of the worker.
    fn reset_rank(&mut self, out: &mut Out, idx: usize) {
        self.counters[C_RESETS] += 1;
        if self.wire == Wire::Dynamo14 {
            // Dynamo 1.4+ routers clear only the event's dp rank
            self.push14(idx, StorageTier::Device, Ev14::Cleared);
            return;
        }
        // `ranks` holds exactly the configured ranks, or the seen ones
        if self.ranks.len() == 1 {
            self.ranks[idx].live.clear();
            self.emit(out, idx, DataRef::Cleared);
            self.counters[C_EMITTED_CLEARED] += 1;
            return;
        }
        let mut live: Vec<u64> = self.ranks[idx].live.drain().collect();
        live.sort_unstable();
        self.emit_removed(out, idx, live, StorageTier::Device);
    }

    // --------------------------------------------------------------------------------------------
    // dynamo-1.4 (SPEC 5b): coalesce adjacent events, refcount removes, number, then pack the call's
    // events into envelopes, as Dynamo 1.6.1's publisher does.

    /// Coalesces `ev` with the pending event when it continues it: a store whose parent is the
    /// pending store's last block, or a remove after a remove, of the same tier, up to
    /// MAX_COALESCED_BLOCKS. A `cleared` flushes the pending event and passes as it is.
    fn push14(&mut self, idx: usize, tier: StorageTier, ev: Ev14) {
        if matches!(ev, Ev14::Cleared) {
            self.flush14(idx);
            self.ready14(idx, tier, ev);
            return;
        }
        if let Some((ptier, pending)) = self.pending.as_mut() {
            let merged = *ptier == tier
                && match (pending, &ev) {
                    (
                        Ev14::Stored { blocks, .. },
                        Ev14::Stored {
                            parent_hash: next_parent,
                            ..
                        },
                    ) => *next_parent == blocks.last().map(|b| b.block_hash),
                    (Ev14::Removed(_), Ev14::Removed(_)) => true,
                    _ => false,
                };
            if merged {
                let (_, pending) = self.pending.as_mut().unwrap_or_else(|| unreachable!());
                match (pending, ev) {
                    (Ev14::Stored { blocks, .. }, Ev14::Stored { blocks: next, .. }) => {
                        blocks.extend(next)
                    }
                    (Ev14::Removed(h), Ev14::Removed(next)) => h.extend(next),
                    _ => {}
                }
                if self
                    .pending
                    .as_ref()
                    .is_some_and(|(_, p)| p.blocks() >= MAX_COALESCED_BLOCKS)
                {
                    self.flush14(idx);
                }
                return;
            }
        }
        self.flush14(idx);
        if ev.blocks() >= MAX_COALESCED_BLOCKS {
            self.ready14(idx, tier, ev);
        } else {
            self.pending = Some((tier, ev));
        }
    }

    fn flush14(&mut self, idx: usize) {
        if let Some((tier, ev)) = self.pending.take() {
            self.ready14(idx, tier, ev);
        }
    }

    /// The refcount dedup, then the event's id.
    fn ready14(&mut self, idx: usize, tier: StorageTier, ev: Ev14) {
        let rank = &mut self.ranks[idx];
        let ev = match ev {
            Ev14::Stored {
                parent_hash,
                blocks,
            } => {
                let counts = &mut rank.refcounts[tier as usize];
                let mut untracked = 0;
                for b in &blocks {
                    if counts.len() < MAX_LIVE_BLOCKS_PER_RANK || counts.contains_key(&b.block_hash)
                    {
                        *counts.entry(b.block_hash).or_insert(0) += 1;
                    } else {
                        untracked += 1;
                    }
                }
                self.counters[C_UNTRACKED] += untracked;
                Ev14::Stored {
                    parent_hash,
                    blocks,
                }
            }
            Ev14::Removed(mut hashes) => {
                let counts = &mut rank.refcounts[tier as usize];
                hashes.retain(|h| match counts.get_mut(h) {
                    Some(c) if *c > 1 => {
                        *c -= 1;
                        false
                    }
                    Some(_) => {
                        counts.remove(h);
                        true
                    }
                    None => true,
                });
                if hashes.is_empty() {
                    return;
                }
                Ev14::Removed(hashes)
            }
            Ev14::Cleared => {
                for c in rank.refcounts.iter_mut() {
                    *c = RefCounts::default();
                }
                rank.live.clear();
                Ev14::Cleared
            }
        };
        let event_id = rank.next_id;
        rank.next_id += 1;
        match &ev {
            Ev14::Stored { blocks, .. } => {
                self.counters[C_EMITTED_STORED] += 1;
                self.counters[C_BLOCKS_STORED] += blocks.len() as u64;
            }
            Ev14::Removed(h) => {
                self.counters[C_EMITTED_REMOVED] += 1;
                self.counters[C_BLOCKS_REMOVED] += h.len() as u64;
            }
            Ev14::Cleared => self.counters[C_EMITTED_CLEARED] += 1,
        }
        self.emitted.push((tier, event_id, ev));
    }

    /// Ends a call: flushes the pending event and packs the numbered events into envelopes of at
    /// most MAX_EVENTS_PER_ENVELOPE events and MAX_BLOCKS_PER_ENVELOPE blocks (one larger event
    /// goes alone), each with the rank's publisher id and next sequence.
    fn finish(&mut self, out: &mut Out, idx: usize) {
        if self.wire != Wire::Dynamo14 {
            return;
        }
        self.flush14(idx);
        if self.emitted.is_empty() {
            return;
        }
        let emitted = std::mem::take(&mut self.emitted);
        let dp_rank = self.ranks[idx].rank;
        let publisher_id = self.publisher_id(dp_rank);
        out.first_id.get_or_insert(emitted[0].1);
        let mut start = 0;
        while start < emitted.len() {
            let mut end = start;
            let mut blocks = 0;
            while end < emitted.len() {
                let b = emitted[end].2.blocks();
                if end > start
                    && (end - start == MAX_EVENTS_PER_ENVELOPE
                        || blocks + b > MAX_BLOCKS_PER_ENVELOPE)
                {
                    break;
                }
                blocks += b;
                end += 1;
            }
            self.event_scratch.clear();
            Writer::new(&mut self.event_scratch).array(end - start);
            for (tier, event_id, ev) in &emitted[start..end] {
                write_event_msgpack_meta(
                    &mut self.event_scratch,
                    self.worker_id,
                    *event_id,
                    dp_rank,
                    ev.data(),
                    EventMeta::worker(*tier),
                );
            }
            let rank = &mut self.ranks[idx];
            out.first_sequence.get_or_insert(rank.sequence);
            let at = out.body.len();
            write_envelope(
                &mut out.body,
                publisher_id,
                rank.sequence,
                out.now_ms,
                KV_EVENTS_TOPIC,
                &self.event_scratch,
            );
            rank.sequence += 1;
            let len = out.body.len() - at;
            out.lens.push(len as u32);
            self.counters[C_PAYLOAD_BYTES] += len as u64;
            start = end;
        }
        if let Some(local) = self.local.as_mut() {
            for (tier, event_id, ev) in &emitted {
                if *tier != StorageTier::Device {
                    continue;
                }
                match ev {
                    Ev14::Cleared => local.apply_rank_clear(self.worker_id, *event_id, dp_rank),
                    ev => local.apply(self.worker_id, *event_id, dp_rank, ev.data()),
                };
            }
        }
        // keep the allocation for the next call
        let mut emitted = emitted;
        emitted.clear();
        self.emitted = emitted;
    }

    /// Encodes one router event with the next id of its rank and appends it to the output.
    fn emit(&mut self, out: &mut Out, idx: usize, data: DataRef) {
        let rank = &mut self.ranks[idx];
        let event_id = rank.next_id;
        rank.next_id += 1;
        let dp_rank = rank.rank;
        out.first_id.get_or_insert(event_id);
        let start = out.body.len();
        match self.mode {
            Mode::JetStream => {
                write_event_json(&mut out.body, self.worker_id, event_id, dp_rank, data)
            }
            Mode::EventPlane => {
                self.event_scratch.clear();
                write_event_msgpack(
                    &mut self.event_scratch,
                    self.worker_id,
                    event_id,
                    dp_rank,
                    data,
                );
                out.first_sequence.get_or_insert(self.sequence);
                write_envelope(
                    &mut out.body,
                    self.worker_id,
                    self.sequence,
                    out.now_ms,
                    KV_EVENTS_TOPIC,
                    &self.event_scratch,
                );
                self.sequence += 1;
            }
        }
        if let Some(local) = self.local.as_mut() {
            local.apply(self.worker_id, event_id, dp_rank, data);
        }
        let len = out.body.len() - start;
        out.lens.push(len as u32);
        self.counters[C_PAYLOAD_BYTES] += len as u64;
    }
}
