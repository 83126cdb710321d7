//! Router-side wire types and their exact encodings (SPEC 5, and 5b for Dynamo 1.4+): the RouterEvent as rmp-serde
//! named msgpack and as compact JSON with exact u64, the event-plane envelope, ActiveLoad, and the
//! JetStream stream name.

use crate::discovery::encode_segment;
use crate::json::{parse_json, JsonError, Val};
use crate::msgpack::{Head, Reader, Writer};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmObject {
    pub mm_hash: u64,
    pub offsets: Vec<(u32, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockExtraInfo {
    pub mm_objects: Vec<MmObject>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlock {
    pub block_hash: u64,
    pub tokens_hash: u64,
    pub mm_extra_info: Option<BlockExtraInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventData {
    Stored {
        parent_hash: Option<u64>,
        blocks: Vec<StoredBlock>,
    },
    Removed {
        block_hashes: Vec<u64>,
    },
    Cleared,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterEvent {
    pub worker_id: u64,
    pub event_id: u64,
    pub dp_rank: u32,
    pub data: EventData,
}

pub const KV_EVENTS_TOPIC: &str = "kv-events";
pub const KV_METRICS_TOPIC: &str = "kv_metrics";

/// Dynamo 1.4+'s `storage_tier` of a RouterEvent (SPEC 5b): where the blocks live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum StorageTier {
    Device = 0,
    HostPinned = 1,
    Disk = 2,
    External = 3,
}

/// Tier names, indexed by `StorageTier as usize`.
pub const STORAGE_TIERS: [&str; 4] = ["device", "host_pinned", "disk", "external"];

impl StorageTier {
    pub const ALL: [StorageTier; 4] = [
        StorageTier::Device,
        StorageTier::HostPinned,
        StorageTier::Disk,
        StorageTier::External,
    ];

    pub fn name(self) -> &'static str {
        STORAGE_TIERS[self as usize]
    }

    pub fn from_name(s: &[u8]) -> Option<StorageTier> {
        StorageTier::ALL
            .into_iter()
            .find(|t| t.name().as_bytes() == s)
    }

    /// Dynamo 1.6.1's mapping of an engine `medium` (exact case): absent or empty is the device;
    /// None is a medium it does not know (such events are filtered).
    pub fn from_medium(medium: Option<&[u8]>) -> Option<StorageTier> {
        match medium.unwrap_or(b"") {
            b"" | b"GPU" | b"DEVICE" => Some(StorageTier::Device),
            b"CPU" | b"CPU_PINNED" | b"CPU_TIER1" => Some(StorageTier::HostPinned),
            b"CPU_TIER2" | b"DISK" | b"NVME" | b"STORAGE" => Some(StorageTier::Disk),
            b"EXTERNAL" | b"NETWORK" | b"REMOTE" | b"SHARED" => Some(StorageTier::External),
            _ => None,
        }
    }
}

/// Dynamo 1.5+'s `residency_domain` of a RouterEvent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResidencyDomain {
    Worker,
    CacheOwner,
}

/// The Dynamo 1.4+ fields of a decoded RouterEvent; both None for the Dynamo 1.0 shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventMeta {
    pub storage_tier: Option<StorageTier>,
    pub residency_domain: Option<ResidencyDomain>,
}

impl EventMeta {
    /// The 1.4 fields this package's `dynamo-1.4` profile writes.
    pub fn worker(tier: StorageTier) -> Self {
        EventMeta {
            storage_tier: Some(tier),
            residency_domain: Some(ResidencyDomain::Worker),
        }
    }

    /// Whether the event describes the worker's own GPU memory (what a radix index holds): device
    /// tier (absent = device) and worker domain (absent = worker).
    pub fn targets_gpu_index(self) -> bool {
        self.storage_tier.is_none_or(|t| t == StorageTier::Device)
            && self.residency_domain != Some(ResidencyDomain::CacheOwner)
    }

    /// A `cleared` that names its residency domain is Dynamo 1.4+'s: it clears only its dp rank. A
    /// `cleared` without one keeps Dynamo 1.0's meaning, every rank of the worker.
    pub fn rank_scoped(self) -> bool {
        self.residency_domain.is_some()
    }
}

// ------------------------------------------------------------------------------------------------
// msgpack (rmp-serde `to_vec_named`: maps with string keys, in declaration order)

/// Event data borrowed from wherever it lives (the ingest hot path writes split chunks this way).
#[derive(Debug, Clone, Copy)]
pub enum DataRef<'a> {
    Stored {
        parent_hash: Option<u64>,
        blocks: &'a [StoredBlock],
    },
    Removed(&'a [u64]),
    Cleared,
}

impl EventData {
    pub fn as_data_ref(&self) -> DataRef<'_> {
        match self {
            EventData::Stored {
                parent_hash,
                blocks,
            } => DataRef::Stored {
                parent_hash: *parent_hash,
                blocks,
            },
            EventData::Removed { block_hashes } => DataRef::Removed(block_hashes),
            EventData::Cleared => DataRef::Cleared,
        }
    }
}

impl DataRef<'_> {
    pub fn to_owned(self) -> EventData {
        match self {
            DataRef::Stored {
                parent_hash,
                blocks,
            } => EventData::Stored {
                parent_hash,
                blocks: blocks.to_vec(),
            },
            DataRef::Removed(hashes) => EventData::Removed {
                block_hashes: hashes.to_vec(),
            },
            DataRef::Cleared => EventData::Cleared,
        }
    }
}

pub fn write_router_event_msgpack(out: &mut Vec<u8>, ev: &RouterEvent) {
    write_event_msgpack(
        out,
        ev.worker_id,
        ev.event_id,
        ev.dp_rank,
        ev.data.as_data_ref(),
    );
}

pub fn write_event_msgpack(
    out: &mut Vec<u8>,
    worker_id: u64,
    event_id: u64,
    dp_rank: u32,
    data: DataRef,
) {
    write_event_msgpack_meta(
        out,
        worker_id,
        event_id,
        dp_rank,
        data,
        EventMeta::default(),
    );
}

/// A RouterEvent with the Dynamo 1.4+ fields of `meta` (SPEC 5b): `storage_tier` and
/// `residency_domain` after `worker_id` when present, and `start_position: null` in stores when
/// `storage_tier` is present (Dynamo 1.6.1's field order). The default meta writes Dynamo 1.0.
pub fn write_event_msgpack_meta(
    out: &mut Vec<u8>,
    worker_id: u64,
    event_id: u64,
    dp_rank: u32,
    data: DataRef,
    meta: EventMeta,
) {
    let mut w = Writer::new(out);
    w.map(2 + meta.storage_tier.is_some() as usize + meta.residency_domain.is_some() as usize);
    w.str("worker_id");
    w.uint(worker_id);
    if let Some(t) = meta.storage_tier {
        w.str("storage_tier");
        w.str(t.name());
    }
    if let Some(d) = meta.residency_domain {
        w.str("residency_domain");
        w.str(domain_name(d));
    }
    w.str("event");
    w.map(3);
    w.str("event_id");
    w.uint(event_id);
    w.str("data");
    match data {
        DataRef::Stored {
            parent_hash,
            blocks,
        } => write_stored_msgpack_at(&mut w, parent_hash, blocks, meta.storage_tier.is_some()),
        DataRef::Removed(hashes) => write_removed_msgpack(&mut w, hashes),
        DataRef::Cleared => w.str("cleared"),
    }
    w.str("dp_rank");
    w.uint(dp_rank as u64);
}

fn domain_name(d: ResidencyDomain) -> &'static str {
    match d {
        ResidencyDomain::Worker => "worker",
        ResidencyDomain::CacheOwner => "cache_owner",
    }
}

pub fn write_stored_msgpack(w: &mut Writer, parent_hash: Option<u64>, blocks: &[StoredBlock]) {
    write_stored_msgpack_at(w, parent_hash, blocks, false);
}

fn write_stored_msgpack_at(
    w: &mut Writer,
    parent_hash: Option<u64>,
    blocks: &[StoredBlock],
    start_position: bool,
) {
    w.map(1);
    w.str("stored");
    w.map(2 + start_position as usize);
    w.str("parent_hash");
    w.opt_uint(parent_hash);
    if start_position {
        w.str("start_position");
        w.nil();
    }
    w.str("blocks");
    w.array(blocks.len());
    for b in blocks {
        w.map(3);
        w.str("block_hash");
        w.uint(b.block_hash);
        w.str("tokens_hash");
        w.uint(b.tokens_hash);
        w.str("mm_extra_info");
        match &b.mm_extra_info {
            None => w.nil(),
            Some(info) => {
                w.map(1);
                w.str("mm_objects");
                w.array(info.mm_objects.len());
                for o in &info.mm_objects {
                    w.map(2);
                    w.str("mm_hash");
                    w.uint(o.mm_hash);
                    w.str("offsets");
                    w.array(o.offsets.len());
                    for &(a, b) in &o.offsets {
                        w.array(2);
                        w.uint(a as u64);
                        w.uint(b as u64);
                    }
                }
            }
        }
    }
}

pub fn write_removed_msgpack(w: &mut Writer, hashes: &[u64]) {
    w.map(1);
    w.str("removed");
    w.map(1);
    w.str("block_hashes");
    w.array(hashes.len());
    for &h in hashes {
        w.uint(h);
    }
}

/// The event-plane envelope: `{publisher_id, sequence, published_at, topic, payload: bin}`.
pub fn write_envelope(
    out: &mut Vec<u8>,
    publisher_id: u64,
    sequence: u64,
    published_at: u64,
    topic: &str,
    payload: &[u8],
) {
    let mut w = Writer::new(out);
    w.map(5);
    w.str("publisher_id");
    w.uint(publisher_id);
    w.str("sequence");
    w.uint(sequence);
    w.str("published_at");
    w.uint(published_at);
    w.str("topic");
    w.str(topic);
    w.str("payload");
    w.bin(payload);
}

/// Dynamo's `ActiveLoad {worker_id, dp_rank, active_decode_blocks, active_prefill_tokens}`.
pub fn write_active_load(
    out: &mut Vec<u8>,
    worker_id: u64,
    dp_rank: u32,
    active_decode_blocks: Option<u64>,
    active_prefill_tokens: Option<u64>,
) {
    write_active_load_fields(
        out,
        worker_id,
        dp_rank,
        active_decode_blocks,
        active_prefill_tokens,
        None,
    );
}

/// `ActiveLoad` with Dynamo 1.4+'s `kv_used_blocks` (SPEC 5b; always written, nil when None) when
/// `kv_used_blocks` is `Some(_)`; `None` writes the Dynamo 1.0 message.
pub fn write_active_load_fields(
    out: &mut Vec<u8>,
    worker_id: u64,
    dp_rank: u32,
    active_decode_blocks: Option<u64>,
    active_prefill_tokens: Option<u64>,
    kv_used_blocks: Option<Option<u64>>,
) {
    let mut w = Writer::new(out);
    w.map(4 + kv_used_blocks.is_some() as usize);
    w.str("worker_id");
    w.uint(worker_id);
    w.str("dp_rank");
    w.uint(dp_rank as u64);
    w.str("active_decode_blocks");
    w.opt_uint(active_decode_blocks);
    w.str("active_prefill_tokens");
    w.opt_uint(active_prefill_tokens);
    if let Some(used) = kv_used_blocks {
        w.str("kv_used_blocks");
        w.opt_uint(used);
    }
}

// ------------------------------------------------------------------------------------------------
// JSON (serde_json compact output: no spaces, same key order, u64 as bare integers)

#[inline]
pub fn write_u64_dec(out: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

fn write_opt_u64_dec(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => write_u64_dec(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

pub fn write_router_event_json(out: &mut Vec<u8>, ev: &RouterEvent) {
    write_event_json(
        out,
        ev.worker_id,
        ev.event_id,
        ev.dp_rank,
        ev.data.as_data_ref(),
    );
}

pub fn write_event_json(
    out: &mut Vec<u8>,
    worker_id: u64,
    event_id: u64,
    dp_rank: u32,
    data: DataRef,
) {
    write_event_json_meta(
        out,
        worker_id,
        event_id,
        dp_rank,
        data,
        EventMeta::default(),
    );
}

/// The JSON twin of `write_event_msgpack_meta`.
pub fn write_event_json_meta(
    out: &mut Vec<u8>,
    worker_id: u64,
    event_id: u64,
    dp_rank: u32,
    data: DataRef,
    meta: EventMeta,
) {
    out.extend_from_slice(b"{\"worker_id\":");
    write_u64_dec(out, worker_id);
    if let Some(t) = meta.storage_tier {
        out.extend_from_slice(b",\"storage_tier\":\"");
        out.extend_from_slice(t.name().as_bytes());
        out.push(b'"');
    }
    if let Some(d) = meta.residency_domain {
        out.extend_from_slice(b",\"residency_domain\":\"");
        out.extend_from_slice(domain_name(d).as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b",\"event\":{\"event_id\":");
    write_u64_dec(out, event_id);
    out.extend_from_slice(b",\"data\":");
    match data {
        DataRef::Stored {
            parent_hash,
            blocks,
        } => write_stored_json_at(out, parent_hash, blocks, meta.storage_tier.is_some()),
        DataRef::Removed(hashes) => write_removed_json(out, hashes),
        DataRef::Cleared => out.extend_from_slice(b"\"cleared\""),
    }
    out.extend_from_slice(b",\"dp_rank\":");
    write_u64_dec(out, dp_rank as u64);
    out.extend_from_slice(b"}}");
}

pub fn write_stored_json(out: &mut Vec<u8>, parent_hash: Option<u64>, blocks: &[StoredBlock]) {
    write_stored_json_at(out, parent_hash, blocks, false);
}

fn write_stored_json_at(
    out: &mut Vec<u8>,
    parent_hash: Option<u64>,
    blocks: &[StoredBlock],
    start_position: bool,
) {
    out.extend_from_slice(b"{\"stored\":{\"parent_hash\":");
    write_opt_u64_dec(out, parent_hash);
    if start_position {
        out.extend_from_slice(b",\"start_position\":null");
    }
    out.extend_from_slice(b",\"blocks\":[");
    for (i, b) in blocks.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"block_hash\":");
        write_u64_dec(out, b.block_hash);
        out.extend_from_slice(b",\"tokens_hash\":");
        write_u64_dec(out, b.tokens_hash);
        out.extend_from_slice(b",\"mm_extra_info\":");
        match &b.mm_extra_info {
            None => out.extend_from_slice(b"null"),
            Some(info) => {
                out.extend_from_slice(b"{\"mm_objects\":[");
                for (j, o) in info.mm_objects.iter().enumerate() {
                    if j > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(b"{\"mm_hash\":");
                    write_u64_dec(out, o.mm_hash);
                    out.extend_from_slice(b",\"offsets\":[");
                    for (k, &(a, c)) in o.offsets.iter().enumerate() {
                        if k > 0 {
                            out.push(b',');
                        }
                        out.push(b'[');
                        write_u64_dec(out, a as u64);
                        out.push(b',');
                        write_u64_dec(out, c as u64);
                        out.push(b']');
                    }
                    out.extend_from_slice(b"]}");
                }
                out.extend_from_slice(b"]}");
            }
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}}");
}

pub fn write_removed_json(out: &mut Vec<u8>, hashes: &[u64]) {
    out.extend_from_slice(b"{\"removed\":{\"block_hashes\":[");
    for (i, &h) in hashes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_u64_dec(out, h);
    }
    out.extend_from_slice(b"]}}");
}

// ------------------------------------------------------------------------------------------------
// decoding RouterEvents (router side, tests): by key name, unknown keys ignored, any key order

/// Why bytes are not a RouterEvent: `invalid router event: <detail>`, where the detail's first
/// words name the reason (`envelope...`, `malformed envelope`, `trailing bytes after the
/// envelope`: the envelope; `malformed msgpack`, `trailing bytes`, `bad JSON`: the encoding; any
/// other: a well-formed value that is not a RouterEvent). ts/core/api.ts maps them to
/// RouterEventError's reason; the fallback gives the same messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

fn werr<T>(msg: impl Into<String>) -> Result<T, WireError> {
    Err(WireError(format!("invalid router event: {}", msg.into())))
}

fn msgpack_val(r: &mut Reader, level: u32) -> Result<Val, WireError> {
    let head = r.head(level).or_else(|_| werr("malformed msgpack"))?;
    Ok(match head {
        Head::Nil => Val::Null,
        Head::Uint(v) => Val::U64(v),
        Head::Str(s) => Val::Str(String::from_utf8_lossy(s).into_owned()),
        Head::Array(n) => {
            let mut v = Vec::with_capacity(n.min(1024) as usize);
            for _ in 0..n {
                v.push(msgpack_val(r, level + 1)?);
            }
            Val::Arr(v)
        }
        Head::Map(n) => {
            let mut v = Vec::with_capacity(n.min(1024) as usize);
            for _ in 0..n {
                let k = msgpack_val(r, level + 1)?;
                let val = msgpack_val(r, level + 1)?;
                if let Val::Str(k) = k {
                    v.push((k, val));
                }
            }
            Val::Obj(v)
        }
        _ => Val::Other,
    })
}

pub fn decode_router_event_msgpack(bytes: &[u8]) -> Result<RouterEvent, WireError> {
    one(decode_router_events_msgpack(bytes)?)
}

/// A decoded event with its Dynamo 1.4+ fields.
pub type MetaEvent = (RouterEvent, EventMeta);

/// The single event of a decoded payload (a Dynamo 1.0 map, or a Dynamo 1.4 array of one).
fn one(mut list: Vec<MetaEvent>) -> Result<RouterEvent, WireError> {
    if list.len() == 1 {
        return Ok(list
            .pop()
            .map(|(ev, _)| ev)
            .unwrap_or_else(|| unreachable!()));
    }
    werr(format!(
        "a batch of {} events where one was expected (decodeRouterEvents reads batches)",
        list.len()
    ))
}

/// msgpack RouterEvents: one map (Dynamo 1.0's payload) or an array of them (Dynamo 1.4+'s).
pub fn decode_router_events_msgpack(bytes: &[u8]) -> Result<Vec<MetaEvent>, WireError> {
    if let Some(ev) = canonical_router_event(bytes) {
        return Ok(vec![(ev, EventMeta::default())]);
    }
    let mut r = Reader::new(bytes);
    let v = msgpack_val(&mut r, 1)?;
    if !r.at_end() {
        return werr("trailing bytes");
    }
    router_events_from_val(&v)
}

fn router_events_from_val(v: &Val) -> Result<Vec<MetaEvent>, WireError> {
    match v {
        // a publisher never sends an empty batch
        Val::Arr(items) if items.is_empty() => werr("an empty batch"),
        Val::Arr(items) => items.iter().map(router_event_from_val).collect(),
        v => Ok(vec![router_event_from_val(v)?]),
    }
}

/// The router's hot path: a RouterEvent exactly as rmp-serde (and this package) writes it, read
/// without building a generic value (its keys, all at level 7 or less, are matched in place). Anything else (other key order, extra keys, multimodal info)
/// returns None and goes through the general decoder, which gives the same answer for this shape.
fn canonical_router_event(bytes: &[u8]) -> Option<RouterEvent> {
    let mut r = Reader::new(bytes);
    let uint = |r: &mut Reader, level: u32| -> Option<u64> {
        match r.head(level).ok()? {
            Head::Uint(v) => Some(v),
            _ => None,
        }
    };
    matches!(r.head(1).ok()?, Head::Map(2)).then_some(())?;
    r.fixstr_key(b"worker_id").then_some(())?;
    let worker_id = uint(&mut r, 2)?;
    r.fixstr_key(b"event").then_some(())?;
    matches!(r.head(2).ok()?, Head::Map(3)).then_some(())?;
    r.fixstr_key(b"event_id").then_some(())?;
    let event_id = uint(&mut r, 3)?;
    r.fixstr_key(b"data").then_some(())?;
    let data = match r.head(3).ok()? {
        Head::Str(b"cleared") => EventData::Cleared,
        Head::Map(1) => match r.head(4).ok()? {
            Head::Str(b"stored") => {
                matches!(r.head(4).ok()?, Head::Map(2)).then_some(())?;
                r.fixstr_key(b"parent_hash").then_some(())?;
                let parent_hash = match r.head(5).ok()? {
                    Head::Nil => None,
                    Head::Uint(v) => Some(v),
                    _ => return None,
                };
                r.fixstr_key(b"blocks").then_some(())?;
                let Head::Array(n) = r.head(5).ok()? else {
                    return None;
                };
                let mut blocks = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    matches!(r.head(6).ok()?, Head::Map(3)).then_some(())?;
                    r.fixstr_key(b"block_hash").then_some(())?;
                    let block_hash = uint(&mut r, 7)?;
                    r.fixstr_key(b"tokens_hash").then_some(())?;
                    let tokens_hash = uint(&mut r, 7)?;
                    r.fixstr_key(b"mm_extra_info").then_some(())?;
                    matches!(r.head(7).ok()?, Head::Nil).then_some(())?;
                    blocks.push(StoredBlock {
                        block_hash,
                        tokens_hash,
                        mm_extra_info: None,
                    });
                }
                EventData::Stored {
                    parent_hash,
                    blocks,
                }
            }
            Head::Str(b"removed") => {
                matches!(r.head(4).ok()?, Head::Map(1)).then_some(())?;
                r.fixstr_key(b"block_hashes").then_some(())?;
                let Head::Array(n) = r.head(5).ok()? else {
                    return None;
                };
                let mut block_hashes = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    block_hashes.push(uint(&mut r, 6)?);
                }
                EventData::Removed { block_hashes }
            }
            _ => return None,
        },
        _ => return None,
    };
    r.fixstr_key(b"dp_rank").then_some(())?;
    let dp_rank = u32::try_from(uint(&mut r, 3)?).ok()?;
    r.at_end().then_some(RouterEvent {
        worker_id,
        event_id,
        dp_rank,
        data,
    })
}

/// The RouterEvent inside an event-plane envelope (`{publisher_id, sequence, published_at, topic,
/// payload: bin}`).
pub fn decode_router_event_envelope(bytes: &[u8]) -> Result<RouterEvent, WireError> {
    one(decode_router_events_envelope(bytes)?)
}

/// The RouterEvents inside an event-plane envelope: a Dynamo 1.0 payload (one event) or a Dynamo
/// 1.4+ payload (an array).
pub fn decode_router_events_envelope(bytes: &[u8]) -> Result<Vec<MetaEvent>, WireError> {
    let mut r = Reader::new(bytes);
    let n = match r.head(1) {
        Ok(Head::Map(n)) => n,
        // a map header that cannot be read (truncated, or claiming more than follows)
        Err(_) if matches!(bytes.first(), Some(0x80..=0x8f | 0xde | 0xdf)) => {
            return werr("malformed envelope")
        }
        _ => return werr("envelope is not a map"),
    };
    let mut payload = None;
    for _ in 0..n {
        let key = r.head(2).or_else(|_| werr("malformed envelope"))?;
        let value = r.head(2).or_else(|_| werr("malformed envelope"))?;
        // the envelope's values are scalars; a container here is not an envelope
        if matches!(key, Head::Array(_) | Head::Map(_))
            || matches!(value, Head::Array(_) | Head::Map(_))
        {
            return werr("malformed envelope");
        }
        if let (Head::Str(b"payload"), Head::Bin(b)) = (key, value) {
            payload = Some(b);
        }
    }
    if !r.at_end() {
        return werr("trailing bytes after the envelope");
    }
    match payload {
        Some(p) => decode_router_events_msgpack(p),
        None => werr("envelope without a bin payload"),
    }
}

/// The encodings `decode_router_event_encoded` reads, by format code.
pub const ENCODED_FORMATS: [&str; 3] = ["envelope", "msgpack", "json"];

/// Decodes a RouterEvent in the encoding `format` names (an index into ENCODED_FORMATS).
pub fn decode_router_event_encoded(bytes: &[u8], format: u32) -> Result<RouterEvent, WireError> {
    one(decode_router_events_encoded(bytes, format)?)
}

/// Decodes the RouterEvents (one, or a Dynamo 1.4+ array) in the encoding `format` names.
pub fn decode_router_events_encoded(
    bytes: &[u8],
    format: u32,
) -> Result<Vec<MetaEvent>, WireError> {
    match format {
        0 => decode_router_events_envelope(bytes),
        1 => decode_router_events_msgpack(bytes),
        2 => decode_router_events_json(bytes),
        _ => Err(WireError(format!(
            "invalid router event format {format}: not one of envelope (0), msgpack (1), json (2)"
        ))),
    }
}

pub fn decode_router_event_json(bytes: &[u8]) -> Result<RouterEvent, WireError> {
    one(decode_router_events_json(bytes)?)
}

pub fn decode_router_events_json(bytes: &[u8]) -> Result<Vec<MetaEvent>, WireError> {
    match parse_json(bytes, crate::msgpack::MAX_DEPTH) {
        Ok(v) => router_events_from_val(&v),
        Err(JsonError(e)) => werr(format!("bad JSON: {e}")),
    }
}

fn u64_field(v: &Val, key: &str) -> Result<u64, WireError> {
    match v.get(key) {
        Some(Val::U64(x)) => Ok(*x),
        _ => werr(format!("{key} must be an unsigned integer")),
    }
}

fn u64_of(v: &Val, what: &str) -> Result<u64, WireError> {
    match v {
        Val::U64(x) => Ok(*x),
        _ => werr(format!("{what} must be an unsigned integer")),
    }
}

fn u32_of(v: &Val, what: &str) -> Result<u32, WireError> {
    let x = u64_of(v, what)?;
    u32::try_from(x).or_else(|_| werr(format!("{what} must fit in 32 bits")))
}

fn arr<'v>(v: Option<&'v Val>, what: &str) -> Result<&'v [Val], WireError> {
    match v {
        Some(Val::Arr(a)) => Ok(a),
        _ => werr(format!("{what} must be an array")),
    }
}

fn router_event_from_val(v: &Val) -> Result<MetaEvent, WireError> {
    if !matches!(v, Val::Obj(_)) {
        return werr("not a map");
    }
    let worker_id = u64_field(v, "worker_id")?;
    let storage_tier = match v.get("storage_tier") {
        None => None,
        Some(Val::Str(s)) if StorageTier::from_name(s.as_bytes()).is_some() => {
            StorageTier::from_name(s.as_bytes())
        }
        Some(_) => return werr("storage_tier must be device, host_pinned, disk or external"),
    };
    let residency_domain = match v.get("residency_domain") {
        None => None,
        Some(Val::Str(s)) if s == "worker" => Some(ResidencyDomain::Worker),
        Some(Val::Str(s)) if s == "cache_owner" => Some(ResidencyDomain::CacheOwner),
        Some(_) => return werr("residency_domain must be worker or cache_owner"),
    };
    let event = match v.get("event") {
        Some(e @ Val::Obj(_)) => e,
        _ => return werr("event must be a map"),
    };
    let event_id = u64_field(event, "event_id")?;
    let dp_rank = match event.get("dp_rank") {
        Some(x) => u32_of(x, "dp_rank")?,
        None => return werr("dp_rank missing"),
    };
    let data = match event.get("data") {
        Some(Val::Str(s)) if s == "cleared" => EventData::Cleared,
        Some(d @ Val::Obj(kv)) if kv.len() == 1 => {
            if let Some(s) = d.get("stored") {
                let parent_hash = match s.get("parent_hash") {
                    None | Some(Val::Null) => None,
                    Some(x) => Some(u64_of(x, "parent_hash")?),
                };
                match s.get("start_position") {
                    None | Some(Val::Null) => {}
                    Some(x) => {
                        u32_of(x, "start_position")?;
                    }
                }
                let blocks = arr(s.get("blocks"), "blocks")?
                    .iter()
                    .map(|b| {
                        Ok(StoredBlock {
                            block_hash: u64_field(b, "block_hash")?,
                            tokens_hash: u64_field(b, "tokens_hash")?,
                            mm_extra_info: match b.get("mm_extra_info") {
                                None | Some(Val::Null) => None,
                                Some(info) => Some(extra_info_from_val(info)?),
                            },
                        })
                    })
                    .collect::<Result<_, WireError>>()?;
                EventData::Stored {
                    parent_hash,
                    blocks,
                }
            } else if let Some(r) = d.get("removed") {
                let block_hashes = arr(r.get("block_hashes"), "block_hashes")?
                    .iter()
                    .map(|h| u64_of(h, "block hash"))
                    .collect::<Result<_, _>>()?;
                EventData::Removed { block_hashes }
            } else {
                return werr("data must be stored, removed or cleared");
            }
        }
        _ => return werr("data must be stored, removed or cleared"),
    };
    Ok((
        RouterEvent {
            worker_id,
            event_id,
            dp_rank,
            data,
        },
        EventMeta {
            storage_tier,
            residency_domain,
        },
    ))
}

fn extra_info_from_val(v: &Val) -> Result<BlockExtraInfo, WireError> {
    let mm_objects = arr(v.get("mm_objects"), "mm_objects")?
        .iter()
        .map(|o| {
            let offsets = match o.get("offsets") {
                None | Some(Val::Null) => Vec::new(),
                Some(Val::Arr(pairs)) => pairs
                    .iter()
                    .map(|p| match p {
                        Val::Arr(ab) if ab.len() == 2 => {
                            Ok((u32_of(&ab[0], "offset")?, u32_of(&ab[1], "offset")?))
                        }
                        _ => werr("offsets must be [start, end] pairs"),
                    })
                    .collect::<Result<_, _>>()?,
                _ => return werr("offsets must be an array"),
            };
            Ok(MmObject {
                mm_hash: u64_field(o, "mm_hash")?,
                offsets,
            })
        })
        .collect::<Result<_, WireError>>()?;
    Ok(BlockExtraInfo { mm_objects })
}

// ------------------------------------------------------------------------------------------------
// names

/// The event-plane subject a Dynamo 1.0 router subscribes to.
pub fn kv_events_subject(namespace: &str, component: &str) -> String {
    format!("namespace.{namespace}.component.{component}.{KV_EVENTS_TOPIC}")
}

/// The subject a Dynamo 1.0 router reads worker load (ActiveLoad in a `kv_metrics` envelope) from.
pub fn kv_metrics_subject(namespace: &str) -> String {
    format!("namespace.{namespace}.{KV_METRICS_TOPIC}")
}

/// Dynamo 1.4+'s endpoint-scoped subject prefix `namespace.{ns}.component.{c}.endpoint.{e}`, each
/// segment percent-encoded.
pub fn endpoint_subject_prefix(namespace: &str, component: &str, endpoint: &str) -> String {
    format!(
        "namespace.{}.component.{}.endpoint.{}",
        encode_segment(namespace),
        encode_segment(component),
        encode_segment(endpoint)
    )
}

/// Dynamo 1.4+'s subject of `topic` (`kv-events`, `kv_metrics`) for one serving endpoint.
pub fn endpoint_subject(namespace: &str, component: &str, endpoint: &str, topic: &str) -> String {
    format!(
        "{}.{topic}",
        endpoint_subject_prefix(namespace, component, endpoint)
    )
}

/// The subject events are published to in a JetStream stream.
pub fn jetstream_subject(stream_name: &str) -> String {
    format!("{stream_name}.{KV_EVENTS_TOPIC}")
}

/// The JetStream stream name: slug(`namespace.{ns}.component.{comp}.kv-events`) with `_` turned
/// into `-`. slug = Unicode lowercase, every code point outside [a-z0-9-_] replaced by `_`, leading
/// `_` trimmed.
pub fn jetstream_stream_name(namespace: &str, component: &str) -> String {
    let lowered = kv_events_subject(namespace, component).to_lowercase();
    let slug: String = lowered
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    slug.trim_start_matches('_').replace('_', "-")
}
