//! Tolerant decoding of engine KV-event batches (SPEC 2.2-2.4): vLLM (array and map eras), SGLang and
//! TensorRT-LLM shapes. A batch is decoded in one pass; a value that breaks msgpack structure or depth
//! makes the whole batch `Malformed`, while a bad field only marks its own event invalid and the
//! decoder keeps consuming bytes so its neighbours are unaffected.

use crate::msgpack::{Head, Malformed, Reader, Res};
use crate::wire::{BlockExtraInfo, MmObject};

/// A field's state after decoding: absent, present with the wrong type, or a good value. A repeated
/// map key overwrites the state (the last value wins).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Field<T> {
    #[default]
    Absent,
    Invalid,
    Ok(T),
}

/// Everything the tier and group checks look at (SPEC 3 steps 3-4).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters<'a> {
    pub medium: Option<&'a [u8]>,
    pub locality: Option<&'a [u8]>,
    pub group_idx: Option<u32>,
    pub kind: Option<&'a [u8]>,
    /// Dynamo 1.4+ reads (the `dynamo-1.4` profile only): `locality` at array position 12, and
    /// whether an `ownership` (map key, or array position 13) is present and not nil.
    pub locality_pos: Option<&'a [u8]>,
    pub ownership: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreEvent<'a> {
    pub block_hashes: Vec<u64>,
    pub parent_hash: Option<u64>,
    /// token_ids as u32 little-endian bytes (what the block hash consumes).
    pub tokens_le: Vec<u8>,
    pub block_size: u64,
    pub lora_name: Option<&'a str>,
    /// Per block multimodal info (explicit block_mm_infos, or derived from extra_keys).
    pub mm: Option<Vec<Option<BlockExtraInfo>>>,
    /// The same under Dynamo 1.5+'s rule (the `dynamo-1.4` profile): only marker extra keys.
    pub mm_markers: Option<Vec<Option<BlockExtraInfo>>>,
    /// The cache salt: the `cache_salt` key, SGLang's position-7 `{cache_salt}` map, or a
    /// `dynamo-cache-salt:` extra key of block 0 (used by the `dynamo-1.4` profile only).
    pub cache_salt: Option<&'a str>,
    /// token_ids came as Eagle bigram pairs `[[a, b], [b, c], ...]` (tokens_le holds `a, b, c...`).
    pub eagle: bool,
    pub filters: Filters<'a>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent<'a> {
    Stored(StoreEvent<'a>),
    Removed {
        block_hashes: Vec<u64>,
        filters: Filters<'a>,
    },
    Cleared,
    /// Not a tagged map or non-empty tagged array, a tag that is not a string, or a bad field.
    Invalid,
    UnknownType,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Batch<'a> {
    pub dp_rank: u32,
    /// The 4th element of a positional batch when it is a 16-byte bin (vLLM's publisher id).
    pub publisher_id: Option<&'a [u8]>,
    /// The events that may emit something, in order. Invalid and unknown-type events are only
    /// counted: storing them would let one-byte junk events cost far more memory than their bytes.
    pub events: Vec<EngineEvent<'a>>,
    pub invalid: u32,
    pub unknown_type: u32,
}

/// Decodes a whole batch. `Err` = malformed (SPEC 2.2): nothing of it may be applied.
pub fn decode_batch(payload: &[u8]) -> Res<Batch<'_>> {
    read_batch(payload, true)
}

/// Checks the whole batch (structure, depth, header fields) without decoding events: `Ok` exactly when
/// `decode_batch` would succeed.
pub fn peek_batch(payload: &[u8]) -> Res<(u32, Option<&[u8]>)> {
    let b = read_batch(payload, false)?;
    Ok((b.dp_rank, b.publisher_id))
}

fn read_batch(payload: &[u8], decode_events: bool) -> Res<Batch<'_>> {
    let mut r = Reader::new(payload);
    let mut events = Events::default();
    let mut publisher_id = None;
    let dp_rank = match r.head(1)? {
        Head::Array(n) => {
            if n < 2 {
                return Err(Malformed);
            }
            r.skip(2)?; // ts is not validated
            if !read_events(&mut r, decode_events, &mut events)? {
                return Err(Malformed);
            }
            let mut rank = 0;
            if n >= 3 {
                rank = rank_value(r.head(2)?)?;
            }
            if n >= 4 {
                match r.head(2)? {
                    Head::Bin(b) if b.len() == 16 => publisher_id = Some(b),
                    h => skip_children(&mut r, h, 2)?,
                }
                r.skip_n(n as u64 - 4, 2)?;
            }
            rank
        }
        Head::Map(n) => {
            let mut dpr: Option<Res<Option<u32>>> = None; // data_parallel_rank
            let mut dp: Option<Res<Option<u32>>> = None; // dp_rank
            let mut have_events = false;
            for _ in 0..n {
                match r.head(2)? {
                    Head::Str(b"events") => {
                        events = Events::default();
                        have_events = read_events(&mut r, decode_events, &mut events)?;
                    }
                    Head::Str(b"data_parallel_rank") => dpr = Some(opt_rank(r.head(2)?, &mut r)),
                    Head::Str(b"dp_rank") => dp = Some(opt_rank(r.head(2)?, &mut r)),
                    h => {
                        skip_children(&mut r, h, 2)?;
                        r.skip(2)?;
                    }
                }
            }
            if !have_events {
                return Err(Malformed);
            }
            match (dpr, dp) {
                (Some(Ok(Some(rank))), _) => rank,
                (Some(Err(_)), _) => return Err(Malformed),
                (_, Some(Ok(Some(rank)))) => rank,
                (_, Some(Err(_))) => return Err(Malformed),
                _ => 0,
            }
        }
        _ => return Err(Malformed),
    };
    if !r.at_end() {
        return Err(Malformed);
    }
    Ok(Batch {
        dp_rank,
        publisher_id,
        events: events.kept,
        invalid: events.invalid,
        unknown_type: events.unknown_type,
    })
}

/// The rank of a positional batch: nil → 0, an integer within u32, else malformed.
fn rank_value(h: Head) -> Res<u32> {
    match h {
        Head::Nil => Ok(0),
        Head::Uint(v) if v <= u32::MAX as u64 => Ok(v as u32),
        _ => Err(Malformed),
    }
}

/// A rank in a map batch: Ok(None) for nil, Err for a bad value (children consumed either way).
fn opt_rank(h: Head, r: &mut Reader) -> Res<Option<u32>> {
    match h {
        Head::Nil => Ok(None),
        Head::Uint(v) if v <= u32::MAX as u64 => Ok(Some(v as u32)),
        h => {
            skip_children(r, h, 2)?;
            Err(Malformed)
        }
    }
}

/// Reads the `events` value at level 2. Ok(false) when it is not an array (the batch is then
/// malformed unless a later `events` key replaces it); Err for broken bytes.
#[derive(Default)]
struct Events<'a> {
    kept: Vec<EngineEvent<'a>>,
    invalid: u32,
    unknown_type: u32,
}

fn read_events<'a>(r: &mut Reader<'a>, decode: bool, out: &mut Events<'a>) -> Res<bool> {
    match r.head(2)? {
        Head::Array(n) => {
            if decode {
                // no reserve from the header's count: the events may not be there
                for _ in 0..n {
                    match read_event(r, 3)? {
                        EngineEvent::Invalid => out.invalid += 1,
                        EngineEvent::UnknownType => out.unknown_type += 1,
                        ev => out.kept.push(ev),
                    }
                }
            } else {
                r.skip_n(n as u64, 3)?;
            }
            Ok(true)
        }
        h => {
            skip_children(r, h, 2)?;
            Ok(false)
        }
    }
}

/// After reading a header the caller does not want, consume the container's children.
#[inline]
fn skip_children(r: &mut Reader, h: Head, level: u32) -> Res<()> {
    match h {
        Head::Array(n) => r.skip_n(n as u64, level + 1),
        Head::Map(n) => r.skip_n(2 * n as u64, level + 1),
        _ => Ok(()),
    }
}

#[derive(Default)]
struct Fields<'a> {
    block_hashes: Field<Vec<u64>>,
    parent: Field<Option<u64>>,
    tokens: Field<Vec<u8>>,
    eagle: bool,
    block_size: Field<u64>,
    lora_name: Option<&'a str>,
    cache_salt: Option<&'a str>,
    extra_keys: Option<ExtraKeys<'a>>,
    mm_infos: Field<Option<Vec<Option<BlockExtraInfo>>>>,
    filters: Filters<'a>,
}

/// What extra_keys hold: per block the multimodal ids (mm_hash, whether the key is a Dynamo 1.5+
/// marker), and block 0's `dynamo-cache-salt:` strings, in order.
#[derive(Default)]
struct ExtraKeys<'a> {
    blocks: Vec<Vec<(u64, bool)>>,
    salt_keys: Vec<&'a [u8]>,
}

/// The tag a producer puts before a cache salt in block 0's extra keys.
pub const CACHE_SALT_PREFIX: &[u8] = b"dynamo-cache-salt:";
/// At most this many salt-tagged keys of block 0 are kept (the first usable one wins).
const MAX_SALT_KEYS: usize = 4;

#[derive(Clone, Copy, PartialEq)]
enum Tag {
    Stored,
    Removed,
    Cleared,
    Unknown,
}

fn tag_of(s: &[u8]) -> Tag {
    match s {
        b"BlockStored" => Tag::Stored,
        b"BlockRemoved" => Tag::Removed,
        b"AllBlocksCleared" => Tag::Cleared,
        _ => Tag::Unknown,
    }
}

fn read_event<'a>(r: &mut Reader<'a>, level: u32) -> Res<EngineEvent<'a>> {
    let inner = level + 1;
    match r.head(level)? {
        Head::Array(0) => Ok(EngineEvent::Invalid),
        Head::Array(n) => {
            let tag = match r.head(inner)? {
                Head::Str(s) => tag_of(s),
                h => {
                    skip_children(r, h, inner)?;
                    r.skip_n(n as u64 - 1, inner)?;
                    return Ok(EngineEvent::Invalid);
                }
            };
            let mut f = Fields::default();
            let rest = n as u64 - 1; // values after the tag
            match tag {
                Tag::Stored => {
                    read_store_positions(r, rest, inner, &mut f)?;
                    Ok(finish_store(f))
                }
                Tag::Removed => {
                    // [tag, block_hashes, medium?, group_idx?]
                    let mut i = 0;
                    while i < rest {
                        let h = r.head(inner)?;
                        match i {
                            0 => f.block_hashes = hashes(r, h, inner)?,
                            1 => f.filters.medium = opt_str(r, h, inner)?,
                            2 => f.filters.group_idx = opt_u32(r, h, inner)?,
                            _ => skip_children(r, h, inner)?,
                        }
                        i += 1;
                    }
                    Ok(finish_remove(f))
                }
                Tag::Cleared => {
                    r.skip_n(rest, inner)?;
                    Ok(EngineEvent::Cleared)
                }
                Tag::Unknown => {
                    r.skip_n(rest, inner)?;
                    Ok(EngineEvent::UnknownType)
                }
            }
        }
        Head::Map(n) => {
            let mut tag: Field<Tag> = Field::Absent;
            let mut f = Fields::default();
            for _ in 0..n {
                let key = match r.head(inner)? {
                    Head::Str(s) => s,
                    h => {
                        // non-string keys are skipped with their values
                        skip_children(r, h, inner)?;
                        r.skip(inner)?;
                        continue;
                    }
                };
                let h = r.head(inner)?;
                match key {
                    b"type" => {
                        tag = match h {
                            Head::Str(s) => Field::Ok(tag_of(s)),
                            h => {
                                skip_children(r, h, inner)?;
                                Field::Invalid
                            }
                        }
                    }
                    _ => read_named_field(r, key, h, inner, &mut f)?,
                }
            }
            Ok(match tag {
                Field::Ok(Tag::Stored) => finish_store(f),
                Field::Ok(Tag::Removed) => finish_remove(f),
                Field::Ok(Tag::Cleared) => EngineEvent::Cleared,
                Field::Ok(Tag::Unknown) => EngineEvent::UnknownType,
                _ => EngineEvent::Invalid,
            })
        }
        h => {
            skip_children(r, h, level)?;
            Ok(EngineEvent::Invalid)
        }
    }
}

/// BlockStored positions 1.. (SPEC 2.3 table); `rest` values follow the tag.
fn read_store_positions<'a>(
    r: &mut Reader<'a>,
    rest: u64,
    level: u32,
    f: &mut Fields<'a>,
) -> Res<()> {
    let mut kind_at_10 = false;
    for i in 1..=rest {
        let h = r.head(level)?;
        match i {
            1 => f.block_hashes = hashes(r, h, level)?,
            2 => f.parent = parent(r, h, level)?,
            3 => f.tokens = tokens(r, h, level, &mut f.eagle)?,
            4 => f.block_size = uint(r, h, level)?,
            6 => f.filters.medium = opt_str(r, h, level)?,
            7 => match h {
                // SGLang's BlockStoredWithMetadata: `{cache_salt}` instead of a LoRA name
                Head::Map(k) => {
                    for _ in 0..k {
                        let key = r.head(level + 1)?;
                        let v = r.head(level + 1)?;
                        if key == Head::Str(b"cache_salt") {
                            f.cache_salt = utf8(r, v, level + 1)?;
                        } else {
                            skip_children(r, key, level + 1)?;
                            skip_children(r, v, level + 1)?;
                        }
                    }
                }
                h => f.lora_name = lora(r, h, level)?,
            },
            8 => f.extra_keys = extra_keys(r, h, level)?,
            9 => match h {
                Head::Array(_) => f.mm_infos = mm_infos(r, h, level)?,
                Head::Nil => kind_at_10 = true,
                Head::Uint(v) => {
                    f.filters.group_idx = u32::try_from(v).ok();
                    kind_at_10 = true;
                }
                Head::Neg(_) => kind_at_10 = true, // an integer outside u32: group_idx absent
                h => skip_children(r, h, level)?,
            },
            10 if kind_at_10 => f.filters.kind = opt_str(r, h, level)?,
            // Dynamo 1.4+: 11 sliding window (ignored), 12 locality, 13 ownership
            12 => f.filters.locality_pos = opt_str(r, h, level)?,
            13 => f.filters.ownership = present(r, h, level)?,
            _ => skip_children(r, h, level)?, // lora_id (5) and extra positions
        }
    }
    Ok(())
}

/// Map keys (the same names for stores and removes; each event type reads the ones it uses).
fn read_named_field<'a>(
    r: &mut Reader<'a>,
    key: &[u8],
    h: Head<'a>,
    level: u32,
    f: &mut Fields<'a>,
) -> Res<()> {
    match key {
        b"block_hashes" => f.block_hashes = hashes(r, h, level)?,
        b"parent_block_hash" => f.parent = parent(r, h, level)?,
        b"token_ids" => f.tokens = tokens(r, h, level, &mut f.eagle)?,
        b"block_size" => f.block_size = uint(r, h, level)?,
        b"medium" => f.filters.medium = opt_str(r, h, level)?,
        b"lora_name" => f.lora_name = lora(r, h, level)?,
        b"extra_keys" => f.extra_keys = extra_keys(r, h, level)?,
        b"block_mm_infos" => f.mm_infos = mm_infos(r, h, level)?,
        b"group_idx" => f.filters.group_idx = opt_u32(r, h, level)?,
        b"kv_cache_spec_kind" => f.filters.kind = opt_str(r, h, level)?,
        b"locality" => f.filters.locality = opt_str(r, h, level)?,
        b"cache_salt" => f.cache_salt = utf8(r, h, level)?,
        b"ownership" => f.filters.ownership = present(r, h, level)?,
        _ => skip_children(r, h, level)?,
    }
    Ok(())
}

fn finish_store(f: Fields) -> EngineEvent {
    let (Field::Ok(block_hashes), Field::Ok(tokens_le), Field::Ok(block_size)) =
        (f.block_hashes, f.tokens, f.block_size)
    else {
        return EngineEvent::Invalid;
    };
    let parent_hash = match f.parent {
        Field::Invalid => return EngineEvent::Invalid,
        Field::Absent => None,
        Field::Ok(p) => p,
    };
    let (explicit, keys) = match f.mm_infos {
        Field::Invalid => return EngineEvent::Invalid,
        Field::Ok(Some(explicit)) => (Some(explicit), f.extra_keys),
        Field::Absent | Field::Ok(None) => (None, f.extra_keys),
    };
    let (mm, mm_markers) = match explicit {
        Some(explicit) => (Some(explicit.clone()), Some(explicit)),
        None => match &keys {
            Some(k) => (mm_of_keys(&k.blocks, false), mm_of_keys(&k.blocks, true)),
            None => (None, None),
        },
    };
    let cache_salt = f.cache_salt.or_else(|| {
        let k = keys.as_ref()?;
        // the first key equal to the LoRA name is that name, not a salt
        let mut lora = f.lora_name.filter(|l| !l.is_empty()).map(str::as_bytes);
        k.salt_keys.iter().find_map(|&key| {
            if lora == Some(key) {
                lora = None;
                return None;
            }
            let ns = &key[CACHE_SALT_PREFIX.len()..];
            (!ns.is_empty())
                .then(|| std::str::from_utf8(ns).ok())
                .flatten()
        })
    });
    EngineEvent::Stored(StoreEvent {
        block_hashes,
        parent_hash,
        tokens_le,
        block_size,
        lora_name: f.lora_name,
        mm,
        mm_markers,
        cache_salt,
        eagle: f.eagle,
        filters: f.filters,
    })
}

/// Per-block mm info from extra keys (`markers_only`: Dynamo 1.5+'s rule); None when no block has
/// an object.
fn mm_of_keys(
    blocks: &[Vec<(u64, bool)>],
    markers_only: bool,
) -> Option<Vec<Option<BlockExtraInfo>>> {
    let infos: Vec<Option<BlockExtraInfo>> = blocks
        .iter()
        .map(|k| {
            let mm_objects: Vec<MmObject> = k
                .iter()
                .filter(|(_, marker)| *marker || !markers_only)
                .map(|&(mm_hash, _)| MmObject {
                    mm_hash,
                    offsets: Vec::new(),
                })
                .collect();
            (!mm_objects.is_empty()).then_some(BlockExtraInfo { mm_objects })
        })
        .collect();
    infos.iter().any(Option::is_some).then_some(infos)
}

fn finish_remove(f: Fields) -> EngineEvent {
    match f.block_hashes {
        Field::Ok(block_hashes) => EngineEvent::Removed {
            block_hashes,
            filters: f.filters,
        },
        _ => EngineEvent::Invalid,
    }
}

// ------------------------------------------------------------------------------------------------
// field readers: each consumes exactly the value whose header `h` was read at `level`

/// uint as is, negative int as u64 two's complement, non-empty bin as its last 8 bytes big-endian.
#[inline]
fn hash_of(h: Head) -> Option<u64> {
    match h {
        Head::Uint(v) => Some(v),
        Head::Neg(v) => Some(v as u64),
        Head::Bin(b) if !b.is_empty() => {
            let tail = &b[b.len().saturating_sub(8)..];
            Some(tail.iter().fold(0u64, |acc, &x| (acc << 8) | x as u64))
        }
        _ => None,
    }
}

/// An array field read element by element: `elem` gets each element's header (at `level + 1`),
/// consumes the element and returns None for a bad one, which makes the field invalid (the rest is
/// still consumed). A value that is not an array is invalid.
fn array_field<'a, T>(
    r: &mut Reader<'a>,
    h: Head<'a>,
    level: u32,
    mut elem: impl FnMut(&mut Reader<'a>, Head<'a>) -> Res<Option<T>>,
) -> Res<Field<Vec<T>>> {
    let Head::Array(n) = h else {
        skip_children(r, h, level)?;
        return Ok(Field::Invalid);
    };
    let mut out = Vec::with_capacity(n as usize);
    let mut ok = true;
    for _ in 0..n {
        let e = r.head(level + 1)?;
        match elem(r, e)? {
            Some(v) => out.push(v),
            None => ok = false,
        }
    }
    Ok(if ok { Field::Ok(out) } else { Field::Invalid })
}

fn hashes<'a>(r: &mut Reader<'a>, h: Head<'a>, level: u32) -> Res<Field<Vec<u64>>> {
    array_field(r, h, level, |r, e| {
        let v = hash_of(e);
        if v.is_none() {
            skip_children(r, e, level + 1)?;
        }
        Ok(v)
    })
}

fn parent(r: &mut Reader, h: Head, level: u32) -> Res<Field<Option<u64>>> {
    if h == Head::Nil {
        return Ok(Field::Ok(None));
    }
    match hash_of(h) {
        Some(v) => Ok(Field::Ok(Some(v))),
        None => {
            skip_children(r, h, level)?;
            Ok(Field::Invalid)
        }
    }
}

/// token_ids: integers 0..2^32-1, or Eagle bigram pairs `[[a, b], [b, c], ...]` (Dynamo 1.4+),
/// read as `a, b, c, ...` (each pair's first token, then the last pair's second) with `eagle` set.
/// A mix of both forms is invalid.
fn tokens(r: &mut Reader, h: Head, level: u32, eagle: &mut bool) -> Res<Field<Vec<u8>>> {
    *eagle = false;
    let Head::Array(n) = h else {
        skip_children(r, h, level)?;
        return Ok(Field::Invalid);
    };
    let mut out = Vec::with_capacity(n as usize * 4);
    let mut ok = true;
    // the fast path skips the per-value depth check, which can only fail past the limit
    let fast = level < crate::msgpack::MAX_DEPTH;
    let done = if fast {
        r.small_uints_le(n as usize, &mut out)
    } else {
        0
    };
    let mut plain = done;
    let mut pairs = 0usize;
    let mut last_second = None;
    for _ in done..n as usize {
        if fast && pairs == 0 {
            if let Some(v) = r.small_uint() {
                out.extend_from_slice(&v.to_le_bytes());
                plain += 1;
                continue;
            }
        }
        match r.head(level + 1)? {
            Head::Uint(v) if v <= u32::MAX as u64 => {
                out.extend_from_slice(&(v as u32).to_le_bytes());
                plain += 1;
            }
            Head::Array(2) => {
                pairs += 1;
                let a = r.head(level + 2)?;
                skip_children(r, a, level + 2)?;
                let b = r.head(level + 2)?;
                skip_children(r, b, level + 2)?;
                match (a, b) {
                    (Head::Uint(a), Head::Uint(b))
                        if a <= u32::MAX as u64 && b <= u32::MAX as u64 =>
                    {
                        out.extend_from_slice(&(a as u32).to_le_bytes());
                        last_second = Some(b as u32);
                    }
                    _ => ok = false,
                }
            }
            e => {
                ok = false;
                skip_children(r, e, level + 1)?;
            }
        }
    }
    if pairs > 0 {
        if plain > 0 {
            ok = false;
        }
        if let Some(b) = last_second {
            out.extend_from_slice(&b.to_le_bytes());
        }
        *eagle = ok;
    }
    Ok(if ok { Field::Ok(out) } else { Field::Invalid })
}

fn uint(r: &mut Reader, h: Head, level: u32) -> Res<Field<u64>> {
    match h {
        Head::Uint(v) => Ok(Field::Ok(v)),
        h => {
            skip_children(r, h, level)?;
            Ok(Field::Invalid)
        }
    }
}

fn opt_u32(r: &mut Reader, h: Head, level: u32) -> Res<Option<u32>> {
    match h {
        Head::Uint(v) => Ok(u32::try_from(v).ok()),
        h => {
            skip_children(r, h, level)?;
            Ok(None)
        }
    }
}

fn opt_str<'a>(r: &mut Reader<'a>, h: Head<'a>, level: u32) -> Res<Option<&'a [u8]>> {
    match h {
        Head::Str(s) => Ok(Some(s)),
        h => {
            skip_children(r, h, level)?;
            Ok(None)
        }
    }
}

fn lora<'a>(r: &mut Reader<'a>, h: Head<'a>, level: u32) -> Res<Option<&'a str>> {
    utf8(r, h, level)
}

/// A valid UTF-8 string, else absent.
fn utf8<'a>(r: &mut Reader<'a>, h: Head<'a>, level: u32) -> Res<Option<&'a str>> {
    Ok(opt_str(r, h, level)?.and_then(|s| std::str::from_utf8(s).ok()))
}

/// Whether a value is present and not nil (consumed).
fn present(r: &mut Reader, h: Head, level: u32) -> Res<bool> {
    skip_children(r, h, level)?;
    Ok(h != Head::Nil)
}

/// Dynamo 1.5+'s marker: 16 hex digits (the mm_hash) followed by 48 `'0'`.
fn is_marker(s: &[u8]) -> bool {
    s.len() == 64 && s[16..].iter().all(|&c| c == b'0')
}

/// A multimodal identifier: exactly 64 hex digits; its first 16 digits are the mm_hash.
fn mm_hex(s: &[u8]) -> Option<u64> {
    if s.len() != 64 || !s.iter().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    Some(s[..16].iter().fold(0u64, |acc, &c| {
        (acc << 4) | (c as char).to_digit(16).unwrap_or(0) as u64
    }))
}

/// extra_keys: per block nil or a list of keys; malformed parts are ignored (never invalid).
fn extra_keys<'a>(r: &mut Reader<'a>, h: Head<'a>, level: u32) -> Res<Option<ExtraKeys<'a>>> {
    let Head::Array(n) = h else {
        skip_children(r, h, level)?;
        return Ok(None);
    };
    let mut keys = ExtraKeys::default();
    for block in 0..n {
        let mut objs = Vec::new();
        match r.head(level + 1)? {
            Head::Array(k) => {
                for _ in 0..k {
                    match r.head(level + 2)? {
                        Head::Str(s) => {
                            objs.extend(mm_hex(s).map(|h| (h, is_marker(s))));
                            if block == 0
                                && s.starts_with(CACHE_SALT_PREFIX)
                                && keys.salt_keys.len() < MAX_SALT_KEYS
                            {
                                keys.salt_keys.push(s);
                            }
                        }
                        Head::Array(0) => {}
                        Head::Array(j) => {
                            // vLLM >= 0.18: (identifier, offset) tuples
                            match r.head(level + 3)? {
                                Head::Str(s) => objs.extend(mm_hex(s).map(|h| (h, is_marker(s)))),
                                e => skip_children(r, e, level + 3)?,
                            }
                            r.skip_n(j as u64 - 1, level + 3)?;
                        }
                        e => skip_children(r, e, level + 2)?,
                    }
                }
            }
            e => skip_children(r, e, level + 1)?,
        }
        keys.blocks.push(objs);
    }
    Ok(Some(keys))
}

/// block_mm_infos (Dynamo format). Nil = absent; anything not matching the format is invalid.
fn mm_infos<'a>(
    r: &mut Reader<'a>,
    h: Head<'a>,
    level: u32,
) -> Res<Field<Option<Vec<Option<BlockExtraInfo>>>>> {
    if h == Head::Nil {
        return Ok(Field::Ok(None));
    }
    let infos = array_field(r, h, level, |r, e| match e {
        Head::Nil => Ok(Some(None)),
        Head::Map(k) => Ok(mm_entry(r, k, level + 2)?.map(Some)),
        e => {
            skip_children(r, e, level + 1)?;
            Ok(None)
        }
    })?;
    Ok(match infos {
        Field::Ok(v) => Field::Ok(Some(v)),
        Field::Invalid => Field::Invalid,
        Field::Absent => Field::Absent,
    })
}

/// `{mm_objects: [...]}` with `k` pairs at `level`; None = invalid (all bytes still consumed).
fn mm_entry(r: &mut Reader, k: u32, level: u32) -> Res<Option<BlockExtraInfo>> {
    let mut objects: Field<Vec<MmObject>> = Field::Absent;
    for _ in 0..k {
        let key = r.head(level)?;
        if key != Head::Str(b"mm_objects") {
            skip_children(r, key, level)?;
            r.skip(level)?;
            continue;
        }
        let v = r.head(level)?;
        objects = array_field(r, v, level, |r, e| match e {
            Head::Map(p) => mm_object(r, p, level + 2),
            e => {
                skip_children(r, e, level + 1)?;
                Ok(None)
            }
        })?;
    }
    Ok(match objects {
        Field::Ok(mm_objects) => Some(BlockExtraInfo { mm_objects }),
        _ => None,
    })
}

/// `{mm_hash, offsets}` with `p` pairs at `level`; None = invalid.
fn mm_object(r: &mut Reader, p: u32, level: u32) -> Res<Option<MmObject>> {
    let mut mm_hash: Field<u64> = Field::Absent;
    let mut offsets: Field<Vec<(u32, u32)>> = Field::Ok(Vec::new());
    for _ in 0..p {
        let key = r.head(level)?;
        match key {
            Head::Str(b"mm_hash") => {
                let v = r.head(level)?;
                mm_hash = uint(r, v, level)?;
            }
            Head::Str(b"offsets") => {
                let v = r.head(level)?;
                offsets = offset_pairs(r, v, level)?;
            }
            key => {
                skip_children(r, key, level)?;
                r.skip(level)?;
            }
        }
    }
    Ok(match (mm_hash, offsets) {
        (Field::Ok(mm_hash), Field::Ok(offsets)) => Some(MmObject { mm_hash, offsets }),
        _ => None,
    })
}

fn offset_pairs<'a>(r: &mut Reader<'a>, h: Head<'a>, level: u32) -> Res<Field<Vec<(u32, u32)>>> {
    if h == Head::Nil {
        return Ok(Field::Ok(Vec::new()));
    }
    array_field(r, h, level, |r, e| {
        if e != Head::Array(2) {
            skip_children(r, e, level + 1)?;
            return Ok(None);
        }
        let a = r.head(level + 2)?;
        skip_children(r, a, level + 2)?;
        let b = r.head(level + 2)?;
        skip_children(r, b, level + 2)?;
        Ok(match (a, b) {
            (Head::Uint(a), Head::Uint(b)) if a <= u32::MAX as u64 && b <= u32::MAX as u64 => {
                Some((a as u32, b as u32))
            }
            _ => None,
        })
    })
}
