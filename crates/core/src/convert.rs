//! Conversion of decoded engine events into router events (SPEC 3): the checks in their order, the
//! rejection reasons, KV-group learning, and the block construction with `tokens_hash`.
//!
//! What happens to a BlockStored: `convert_event` → tier (`filtered_tier`) → group (`filtered_group`)
//! → `check_store` (empty, self_reference, block_size, truncation) → blocks with their hashes.

use std::collections::HashMap;
use std::sync::Arc;

use crate::engine::{EngineEvent, Filters, StoreEvent};
use crate::hash::salt_seed;
use crate::index::MixState;
use crate::wire::{BlockExtraInfo, StorageTier, StoredBlock};

/// The router wire an Ingestor produces (SPEC 5 and 5b).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wire {
    /// Dynamo 1.0 to 1.3: one RouterEvent per envelope, GPU events only.
    #[default]
    Dynamo10,
    /// Dynamo 1.4+: arrays of RouterEvents with `storage_tier`; the engine conversion of Dynamo
    /// 1.6.1 (cache salt, Eagle, marker-only multimodal keys, exact-case tiers, ownership).
    Dynamo14,
}

/// Rejection reasons; the discriminant is the index used in counts (same order as the TS binding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Reason {
    Malformed = 0,
    Invalid = 1,
    UnknownType = 2,
    FilteredTier = 3,
    FilteredGroup = 4,
    Empty = 5,
    SelfReference = 6,
    BlockSize = 7,
    DpRank = 8,
    AmbiguousSalt = 9,
}

pub const REASON_COUNT: usize = 10;

impl Reason {
    pub const ALL: [Reason; REASON_COUNT] = [
        Reason::Malformed,
        Reason::Invalid,
        Reason::UnknownType,
        Reason::FilteredTier,
        Reason::FilteredGroup,
        Reason::Empty,
        Reason::SelfReference,
        Reason::BlockSize,
        Reason::DpRank,
        Reason::AmbiguousSalt,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::Invalid => "invalid",
            Reason::UnknownType => "unknown_type",
            Reason::FilteredTier => "filtered_tier",
            Reason::FilteredGroup => "filtered_group",
            Reason::Empty => "empty",
            Reason::SelfReference => "self_reference",
            Reason::BlockSize => "block_size",
            Reason::DpRank => "dp_rank",
            Reason::AmbiguousSalt => "ambiguous_salt",
        }
    }
}

/// Per-rank knowledge of which KV-cache groups hold main attention (hybrid models).
#[derive(Debug, Default, Clone)]
pub struct GroupTable {
    main_by_group: HashMap<u32, bool>,
}

/// At most this many groups are learned per rank; past it a new group is not learned.
pub const MAX_GROUPS_PER_RANK: usize = 1024;

const MAIN_KINDS: [&[u8]; 3] = [b"full_attention", b"mla_attention", b"sink_full_attention"];

impl GroupTable {
    fn learn(&mut self, group: u32, main: bool) {
        if self.main_by_group.len() < MAX_GROUPS_PER_RANK || self.main_by_group.contains_key(&group)
        {
            self.main_by_group.insert(group, main);
        }
    }

    pub fn len(&self) -> usize {
        self.main_by_group.len()
    }

    pub fn is_empty(&self) -> bool {
        self.main_by_group.is_empty()
    }

    /// SPEC 3 step 4; learns exactly when evaluated.
    fn keep(&mut self, f: &Filters) -> bool {
        match (f.kind, f.group_idx) {
            (Some(kind), group) => {
                let main = MAIN_KINDS.contains(&kind);
                if let Some(g) = group {
                    self.learn(g, main);
                }
                main
            }
            (None, Some(g)) => self.main_by_group.get(&g).copied().unwrap_or(g == 0),
            (None, None) => true,
        }
    }
}

/// The cache-salt chain of one rank in the `dynamo-1.4` profile (SPEC 5b, Dynamo 1.6.1's rule): which
/// salt each device or host-pinned block hash was stored under, so that a store without a salt of its
/// own takes its parent's. Only salted (or ambiguous) hashes are kept; unsalted chains cost nothing.
#[derive(Debug, Default, Clone)]
pub struct SaltChain {
    /// Block hash → its salt; `None`: ambiguous (stored under two salts, or unsalted while it had one).
    by_hash: HashMap<u64, Option<Arc<str>>, MixState>,
}

impl SaltChain {
    /// The salt a store is hashed with, learning its blocks' salt. A store without a salt whose parent is
    /// ambiguous is refused; one whose parent is unknown stays unsalted.
    fn store(
        &mut self,
        block_hashes: &[u64],
        parent: Option<u64>,
        own: Option<&str>,
    ) -> Result<Option<Arc<str>>, Reason> {
        let own = own.filter(|s| !s.is_empty());
        if own.is_none() && self.by_hash.is_empty() {
            return Ok(None);
        }
        let parent_state = parent.and_then(|p| self.by_hash.get(&p));
        let salt = match own {
            Some(own) => Some(match parent_state {
                Some(Some(p)) if &**p == own => Arc::clone(p),
                _ => Arc::from(own),
            }),
            None => match parent_state {
                Some(Some(p)) => Some(Arc::clone(p)),
                Some(None) => return Err(Reason::AmbiguousSalt),
                None => None,
            },
        };
        for &h in block_hashes {
            match &salt {
                Some(salt) => {
                    self.by_hash
                        .entry(h)
                        .and_modify(|e| {
                            if e.as_deref() != Some(&**salt) {
                                *e = None;
                            }
                        })
                        .or_insert_with(|| Some(Arc::clone(salt)));
                }
                None => {
                    if let Some(e) = self.by_hash.get_mut(&h) {
                        *e = None;
                    }
                }
            }
        }
        Ok(salt)
    }

    /// A removal forgets a hash's salt, unless the hash is ambiguous.
    fn removed(&mut self, block_hashes: &[u64]) {
        for h in block_hashes {
            if matches!(self.by_hash.get(h), Some(Some(_))) {
                self.by_hash.remove(h);
            }
        }
    }

    /// AllBlocksCleared forgets every hash of the rank.
    fn clear(&mut self) {
        self.by_hash.clear();
    }

    /// Hashes whose salt (or ambiguity) is remembered.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// SPEC 3 step 3: the index describes what this worker holds in its own GPU memory.
fn tier_ok(f: &Filters) -> bool {
    f.medium.is_none_or(|m| m.eq_ignore_ascii_case(b"GPU"))
        && f.locality.is_none_or(|l| l.eq_ignore_ascii_case(b"LOCAL"))
}

/// A converted store before splitting: what a router should learn.
#[derive(Debug, Clone, PartialEq)]
pub struct Store {
    pub parent_hash: Option<u64>,
    pub blocks: Vec<StoredBlock>,
    /// Set when token_ids ran out before the last hash: (tokens, kept blocks, hashes).
    pub truncated: Option<(usize, usize, usize)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Converted {
    Stored(Store),
    Removed(Vec<u64>),
    /// An engine AllBlocksCleared; the Ingestor turns it into the reset of the rank.
    Cleared,
}

/// SPEC 5b's tier step of the `dynamo-1.4` profile: an `ownership`, a locality other than exactly
/// `LOCAL`, or a medium Dynamo 1.6.1 does not map filters the event; otherwise its storage tier.
fn tier_14(f: &Filters) -> Option<StorageTier> {
    if f.ownership || f.locality.or(f.locality_pos).is_some_and(|l| l != b"LOCAL") {
        return None;
    }
    StorageTier::from_medium(f.medium)
}

/// SPEC 3 checks 1-7 for one decoded event (the `dynamo-1.0` profile).
pub fn convert_event(
    ev: EngineEvent,
    kv_block_size: u32,
    groups: &mut GroupTable,
    scratch: &mut Vec<u8>,
) -> Result<Converted, Reason> {
    convert_event_wire(ev, kv_block_size, groups, scratch, Wire::Dynamo10, None).map(|(c, _)| c)
}

/// SPEC 3 checks 1-7 for one decoded event under `wire`, with the event's storage tier (always the
/// device for `dynamo-1.0`, whose tier step keeps GPU events only). `salts`: the rank's cache-salt
/// chain for `dynamo-1.4` (none: each store is hashed with its own salt only).
pub fn convert_event_wire(
    ev: EngineEvent,
    kv_block_size: u32,
    groups: &mut GroupTable,
    scratch: &mut Vec<u8>,
    wire: Wire,
    salts: Option<&mut SaltChain>,
) -> Result<(Converted, StorageTier), Reason> {
    if wire == Wire::Dynamo14 {
        return convert_14(ev, kv_block_size, groups, scratch, salts);
    }
    let device = StorageTier::Device;
    match ev {
        EngineEvent::Invalid => Err(Reason::Invalid),
        EngineEvent::UnknownType => Err(Reason::UnknownType),
        EngineEvent::Cleared => Ok((Converted::Cleared, device)),
        EngineEvent::Removed {
            block_hashes,
            filters,
        } => {
            if !tier_ok(&filters) {
                return Err(Reason::FilteredTier);
            }
            if !groups.keep(&filters) {
                return Err(Reason::FilteredGroup);
            }
            if block_hashes.is_empty() {
                return Err(Reason::Empty);
            }
            Ok((Converted::Removed(block_hashes), device))
        }
        // Eagle bigram token ids are Dynamo 1.4+ input: not a valid 1.0 store
        EngineEvent::Stored(s) if s.eagle => Err(Reason::Invalid),
        EngineEvent::Stored(s) => {
            if !tier_ok(&s.filters) {
                return Err(Reason::FilteredTier);
            }
            if !groups.keep(&s.filters) {
                return Err(Reason::FilteredGroup);
            }
            let StoreEvent {
                block_hashes,
                parent_hash,
                tokens_le,
                block_size,
                lora_name,
                mm,
                ..
            } = s;
            check_store(
                &block_hashes,
                parent_hash,
                &tokens_le,
                block_size,
                kv_block_size,
                lora_name,
                mm,
                scratch,
            )
            .map(|s| (Converted::Stored(s), device))
        }
    }
}

/// Whether a tier's events follow the cache-salt chain (Dynamo 1.6.1: disk and external ones do not).
fn chained(tier: StorageTier) -> bool {
    matches!(tier, StorageTier::Device | StorageTier::HostPinned)
}

fn convert_14(
    ev: EngineEvent,
    kv_block_size: u32,
    groups: &mut GroupTable,
    scratch: &mut Vec<u8>,
    salts: Option<&mut SaltChain>,
) -> Result<(Converted, StorageTier), Reason> {
    match ev {
        EngineEvent::Invalid => Err(Reason::Invalid),
        EngineEvent::UnknownType => Err(Reason::UnknownType),
        EngineEvent::Cleared => {
            if let Some(chain) = salts {
                chain.clear();
            }
            Ok((Converted::Cleared, StorageTier::Device))
        }
        EngineEvent::Removed {
            block_hashes,
            filters,
        } => {
            let tier = tier_14(&filters).ok_or(Reason::FilteredTier)?;
            if !groups.keep(&filters) {
                return Err(Reason::FilteredGroup);
            }
            if let Some(chain) = salts.filter(|_| chained(tier)) {
                chain.removed(&block_hashes);
            }
            if block_hashes.is_empty() {
                return Err(Reason::Empty);
            }
            Ok((Converted::Removed(block_hashes), tier))
        }
        EngineEvent::Stored(s) => {
            let tier = tier_14(&s.filters).ok_or(Reason::FilteredTier)?;
            if !groups.keep(&s.filters) {
                return Err(Reason::FilteredGroup);
            }
            let StoreEvent {
                block_hashes,
                parent_hash,
                tokens_le,
                block_size,
                lora_name,
                mm_markers,
                cache_salt,
                eagle,
                ..
            } = s;
            // The chain runs before the store's own checks, as in Dynamo 1.6.1: a store refused later
            // (block size, self reference) has still given its hashes their salt.
            let chained_salt = match salts.filter(|_| chained(tier)) {
                Some(chain) => Some(chain.store(&block_hashes, parent_hash, cache_salt)?),
                None => None,
            };
            let cache_salt = match &chained_salt {
                Some(salt) => salt.as_deref(),
                None => cache_salt,
            };
            check_store_with(
                &block_hashes,
                parent_hash,
                &tokens_le,
                block_size,
                kv_block_size,
                StoreHashing {
                    lora_name,
                    cache_salt,
                    eagle,
                },
                mm_markers,
                scratch,
            )
            .map(|s| (Converted::Stored(s), tier))
        }
    }
}

/// The hash inputs of a store besides its tokens and mm info (SPEC 4).
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreHashing<'a> {
    pub lora_name: Option<&'a str>,
    /// Dynamo 1.4+'s cache salt; "" is none.
    pub cache_salt: Option<&'a str>,
    /// Eagle: block i hashes tokens `[i*bs, (i+1)*bs + 1)`.
    pub eagle: bool,
}

/// True when a hash repeats within `hashes` or equals the parent.
fn self_referencing(hashes: &[u64], parent: Option<u64>) -> bool {
    if parent.is_some_and(|p| hashes.contains(&p)) {
        return true;
    }
    if hashes.len() <= 16 {
        return hashes
            .iter()
            .enumerate()
            .any(|(i, h)| hashes[..i].contains(h));
    }
    let mut sorted = hashes.to_vec();
    sorted.sort_unstable();
    sorted.windows(2).any(|w| w[0] == w[1])
}

/// SPEC 3 checks 5-7 and block construction; shared by engine events and the manual API.
/// `tokens_le` holds the token ids as u32 little-endian bytes.
#[allow(clippy::too_many_arguments)]
pub fn check_store(
    block_hashes: &[u64],
    parent_hash: Option<u64>,
    tokens_le: &[u8],
    block_size: u64,
    kv_block_size: u32,
    lora_name: Option<&str>,
    mm: Option<Vec<Option<BlockExtraInfo>>>,
    scratch: &mut Vec<u8>,
) -> Result<Store, Reason> {
    check_store_with(
        block_hashes,
        parent_hash,
        tokens_le,
        block_size,
        kv_block_size,
        StoreHashing {
            lora_name,
            ..StoreHashing::default()
        },
        mm,
        scratch,
    )
}

/// `check_store` with Dynamo 1.4+'s hash inputs. An Eagle block needs `kv_block_size + 1` tokens.
#[allow(clippy::too_many_arguments)]
pub fn check_store_with(
    block_hashes: &[u64],
    parent_hash: Option<u64>,
    tokens_le: &[u8],
    block_size: u64,
    kv_block_size: u32,
    hashing: StoreHashing,
    mm: Option<Vec<Option<BlockExtraInfo>>>,
    scratch: &mut Vec<u8>,
) -> Result<Store, Reason> {
    if block_hashes.is_empty() {
        return Err(Reason::Empty);
    }
    if self_referencing(block_hashes, parent_hash) {
        return Err(Reason::SelfReference);
    }
    let bs = kv_block_size as usize;
    let n_tokens = tokens_le.len() / 4;
    let window = bs + hashing.eagle as usize;
    if block_size != kv_block_size as u64 || n_tokens < window {
        return Err(Reason::BlockSize);
    }
    let kept = block_hashes
        .len()
        .min(crate::hash::block_count(n_tokens, bs, hashing.eagle));
    let truncated = (kept < block_hashes.len()).then_some((n_tokens, kept, block_hashes.len()));
    let seed = salt_seed(hashing.lora_name, hashing.cache_salt);
    let mut mm_iter = mm.map(|v| v.into_iter());
    let stride = bs * 4;
    let blocks = block_hashes[..kept]
        .iter()
        .enumerate()
        .map(|(i, &block_hash)| {
            let info = mm_iter.as_mut().and_then(|it| it.next()).flatten();
            let tokens_hash = crate::hash::block_hash(
                &tokens_le[i * stride..i * stride + window * 4],
                info.as_ref(),
                seed,
                scratch,
            );
            StoredBlock {
                block_hash,
                tokens_hash,
                mm_extra_info: info,
            }
        })
        .collect();
    Ok(Store {
        parent_hash,
        blocks,
        truncated,
    })
}

/// What `decodeEngineBatch` returns: events without publisher state (nothing learned beforehand).
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedBatch {
    pub dp_rank: u32,
    pub events: Vec<Converted>,
    pub rejected: [u32; REASON_COUNT],
}

/// Decodes and converts one batch statelessly. `None` = malformed. `kv_block_size` must be > 0.
pub fn decode_engine_batch(payload: &[u8], kv_block_size: u32) -> Option<DecodedBatch> {
    let batch = crate::engine::decode_batch(payload).ok()?;
    let mut groups = GroupTable::default();
    let mut scratch = Vec::new();
    let mut rejected = [0u32; REASON_COUNT];
    rejected[Reason::Invalid as usize] = batch.invalid;
    rejected[Reason::UnknownType as usize] = batch.unknown_type;
    let mut events = Vec::new();
    for ev in batch.events {
        match convert_event(ev, kv_block_size, &mut groups, &mut scratch) {
            Ok(c) => events.push(c),
            Err(r) => rejected[r as usize] += 1,
        }
    }
    Some(DecodedBatch {
        dp_rank: batch.dp_rank,
        events,
        rejected,
    })
}
