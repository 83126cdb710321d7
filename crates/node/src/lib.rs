//! napi bindings over dynamo-kv-core: the raw interface of ts/core/binding.ts, no logic of its own.
//! Arguments are validated by the TypeScript wrappers first; what still arrives malformed here is
//! turned into a JS error, and `catch_unwind` turns a would-be panic into a JS error, never an abort.

#![deny(clippy::all)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use dynamo_kv_core::convert::{
    decode_engine_batch as core_decode, Converted, Reason, StoreHashing, Wire,
};
use dynamo_kv_core::discovery;
use dynamo_kv_core::engine::peek_batch as core_peek;
use dynamo_kv_core::hash::{compute_block_hashes_with as core_hashes, BlockHashOptions};
use dynamo_kv_core::index::{
    IndexAccess, MemoryReport, RadixIndex, APPLY_OUTCOMES, INDEX_COUNTER_NAMES,
};
use dynamo_kv_core::ingest::{Ingestor, IngestorConfig, Mode, COUNTER_NAMES};
use dynamo_kv_core::local::{write_range_result_json, LocalIndexer, RangeResult, ReplyCursor};
use dynamo_kv_core::query;
use dynamo_kv_core::wire::{
    self, BlockExtraInfo, EventData, EventMeta, MmObject, ResidencyDomain, RouterEvent,
    StorageTier, StoredBlock, ENCODED_FORMATS, KV_EVENTS_TOPIC, KV_METRICS_TOPIC, STORAGE_TIERS,
};
use napi::bindgen_prelude::*;
use napi_derive::napi;

mod http_front;
mod index_fast;
mod ingest_fast;
mod plain;

fn u64_arg(name: &str, b: &BigInt) -> Result<u64> {
    let (signed, v, lossless) = b.get_u64();
    if signed || !lossless {
        return Err(Error::new(
            Status::InvalidArg,
            format!("{name} must be within 0..2^64-1"),
        ));
    }
    Ok(v)
}

fn copy_out(packed: &[u8], out: &mut [u8], offset: usize) -> i64 {
    match out
        .get_mut(offset..)
        .and_then(|o| o.get_mut(..packed.len()))
    {
        Some(dst) => {
            dst.copy_from_slice(packed);
            packed.len() as i64
        }
        None => -(packed.len() as i64),
    }
}

fn now_arg(now_ms: f64) -> u64 {
    if now_ms.is_finite() && now_ms > 0.0 {
        now_ms as u64
    } else {
        0
    }
}

#[napi(object)]
pub struct JsMmObject {
    pub mm_hash: BigInt,
    pub offsets: Vec<Vec<u32>>,
}

#[napi(object)]
pub struct JsBlockExtraInfo {
    pub mm_objects: Vec<JsMmObject>,
}

fn mm_in(info: &JsBlockExtraInfo) -> Result<BlockExtraInfo> {
    let mm_objects = info
        .mm_objects
        .iter()
        .map(|o| {
            let offsets = o
                .offsets
                .iter()
                .map(|p| match p.as_slice() {
                    [a, b] => Ok((*a, *b)),
                    _ => Err(Error::new(
                        Status::InvalidArg,
                        "offsets must be [start, end] pairs",
                    )),
                })
                .collect::<Result<_>>()?;
            Ok(MmObject {
                mm_hash: u64_arg("mmHash", &o.mm_hash)?,
                offsets,
            })
        })
        .collect::<Result<_>>()?;
    Ok(BlockExtraInfo { mm_objects })
}

fn hash_options<'a>(
    lora_name: &'a Option<String>,
    mm: &'a Option<Vec<Option<BlockExtraInfo>>>,
    cache_salt: &'a Option<String>,
    eagle: Option<bool>,
) -> BlockHashOptions<'a> {
    BlockHashOptions {
        lora_name: lora_name.as_deref(),
        cache_salt: cache_salt.as_deref(),
        block_mm_infos: mm.as_deref(),
        eagle: eagle.unwrap_or(false),
    }
}

fn mm_list_in(
    list: Option<Vec<Option<JsBlockExtraInfo>>>,
) -> Result<Option<Vec<Option<BlockExtraInfo>>>> {
    list.map(|l| {
        l.iter()
            .map(|e| e.as_ref().map(mm_in).transpose())
            .collect()
    })
    .transpose()
}

// ------------------------------------------------------------------------------------------------
// JS objects out (shapes of ts/core/binding.ts; built by hand so absent values are null, never undefined)

fn mm_out<'e>(env: &'e Env, info: &BlockExtraInfo) -> Result<Object<'e>> {
    let mut o = Object::new(env)?;
    let objs = info
        .mm_objects
        .iter()
        .map(|m| {
            let mut x = Object::new(env)?;
            x.set("mmHash", BigInt::from(m.mm_hash))?;
            x.set(
                "offsets",
                m.offsets
                    .iter()
                    .map(|&(a, b)| vec![a, b])
                    .collect::<Vec<_>>(),
            )?;
            Ok(x)
        })
        .collect::<Result<Vec<_>>>()?;
    o.set("mmObjects", objs)?;
    Ok(o)
}

fn blocks_out<'e>(env: &'e Env, blocks: &[StoredBlock]) -> Result<Vec<Object<'e>>> {
    blocks
        .iter()
        .map(|b| {
            let mut o = Object::new(env)?;
            o.set("blockHash", BigInt::from(b.block_hash))?;
            o.set("tokensHash", BigInt::from(b.tokens_hash))?;
            match &b.mm_extra_info {
                Some(info) => o.set("mmExtraInfo", mm_out(env, info)?)?,
                None => o.set("mmExtraInfo", Null)?,
            }
            Ok(o)
        })
        .collect()
}

fn data_out<'e>(
    env: &'e Env,
    parent_and_blocks: Option<(Option<u64>, &[StoredBlock])>,
    removed: Option<&[u64]>,
) -> Result<Object<'e>> {
    let mut o = Object::new(env)?;
    if let Some((parent, blocks)) = parent_and_blocks {
        o.set("type", "stored")?;
        o.set("parentHash", parent.map(BigInt::from))?;
        o.set("blocks", blocks_out(env, blocks)?)?;
    } else if let Some(hashes) = removed {
        o.set("type", "removed")?;
        o.set(
            "blockHashes",
            hashes.iter().map(|&h| BigInt::from(h)).collect::<Vec<_>>(),
        )?;
    } else {
        o.set("type", "cleared")?;
    }
    Ok(o)
}

fn event_data_out<'e>(env: &'e Env, data: &EventData) -> Result<Object<'e>> {
    match data {
        EventData::Stored {
            parent_hash,
            blocks,
        } => data_out(env, Some((*parent_hash, blocks)), None),
        EventData::Removed { block_hashes } => data_out(env, None, Some(block_hashes)),
        EventData::Cleared => data_out(env, None, None),
    }
}

// ------------------------------------------------------------------------------------------------
// JS objects in (RouterEventValue)

#[napi(object)]
pub struct JsStoredBlock {
    pub block_hash: BigInt,
    pub tokens_hash: BigInt,
    // Option<Option<_>>: napi reads an absent field as the outer None and null as the inner one
    pub mm_extra_info: Option<Option<JsBlockExtraInfo>>,
}

#[napi(object)]
pub struct JsEventData {
    #[napi(js_name = "type")]
    pub kind: String,
    pub parent_hash: Option<Option<BigInt>>,
    pub blocks: Option<Option<Vec<JsStoredBlock>>>,
    pub block_hashes: Option<Option<Vec<BigInt>>>,
}

#[napi(object)]
pub struct JsEvent {
    pub event_id: BigInt,
    pub dp_rank: u32,
    pub data: JsEventData,
}

#[napi(object)]
pub struct JsRouterEvent {
    pub worker_id: BigInt,
    pub event: JsEvent,
    /// Dynamo 1.4+: `device`, `host_pinned`, `disk` or `external`.
    pub storage_tier: Option<String>,
    /// Dynamo 1.5+: `worker` or `cache_owner`.
    pub residency_domain: Option<String>,
}

fn meta_in(ev: &JsRouterEvent) -> Result<EventMeta> {
    let storage_tier = match ev.storage_tier.as_deref() {
        None => None,
        Some(t) => Some(StorageTier::from_name(t.as_bytes()).ok_or_else(|| {
            Error::new(
                Status::InvalidArg,
                format!("storageTier must be one of {STORAGE_TIERS:?}, got {t}"),
            )
        })?),
    };
    let residency_domain = match ev.residency_domain.as_deref() {
        None => None,
        Some("worker") => Some(ResidencyDomain::Worker),
        Some("cache_owner") => Some(ResidencyDomain::CacheOwner),
        Some(d) => {
            return Err(Error::new(
                Status::InvalidArg,
                format!("residencyDomain must be worker or cache_owner, got {d}"),
            ))
        }
    };
    Ok(EventMeta {
        storage_tier,
        residency_domain,
    })
}

fn router_event_in(ev: &JsRouterEvent) -> Result<RouterEvent> {
    let d = &ev.event.data;
    let data = match d.kind.as_str() {
        "stored" => EventData::Stored {
            parent_hash: d
                .parent_hash
                .as_ref()
                .and_then(|p| p.as_ref())
                .map(|p| u64_arg("parentHash", p))
                .transpose()?,
            blocks: d
                .blocks
                .as_ref()
                .and_then(|b| b.as_deref())
                .unwrap_or_default()
                .iter()
                .map(|b| {
                    Ok(StoredBlock {
                        block_hash: u64_arg("blockHash", &b.block_hash)?,
                        tokens_hash: u64_arg("tokensHash", &b.tokens_hash)?,
                        mm_extra_info: b
                            .mm_extra_info
                            .as_ref()
                            .and_then(|m| m.as_ref())
                            .map(mm_in)
                            .transpose()?,
                    })
                })
                .collect::<Result<_>>()?,
        },
        "removed" => EventData::Removed {
            block_hashes: d
                .block_hashes
                .as_ref()
                .and_then(|b| b.as_deref())
                .unwrap_or_default()
                .iter()
                .map(|h| u64_arg("blockHashes", h))
                .collect::<Result<_>>()?,
        },
        "cleared" => EventData::Cleared,
        other => {
            return Err(Error::new(
                Status::InvalidArg,
                format!("unknown event type {other}"),
            ))
        }
    };
    Ok(RouterEvent {
        worker_id: u64_arg("workerId", &ev.worker_id)?,
        event_id: u64_arg("eventId", &ev.event.event_id)?,
        dp_rank: ev.event.dp_rank,
        data,
    })
}

// ------------------------------------------------------------------------------------------------
// functions

#[napi(catch_unwind)]
pub fn compute_block_hashes(
    tokens: &[u32],
    kv_block_size: u32,
    lora_name: Option<String>,
    block_mm_infos: Option<Vec<Option<JsBlockExtraInfo>>>,
    cache_salt: Option<String>,
    eagle: Option<bool>,
) -> Result<BigUint64Array> {
    let mm = mm_list_in(block_mm_infos)?;
    Ok(BigUint64Array::new(core_hashes(
        tokens,
        kv_block_size as usize,
        &hash_options(&lora_name, &mm, &cache_salt, eagle),
    )))
}

#[napi(catch_unwind)]
pub fn decode_engine_batch<'e>(
    env: &'e Env,
    payload: &[u8],
    kv_block_size: u32,
) -> Result<Option<Object<'e>>> {
    if kv_block_size == 0 {
        return Err(Error::new(Status::InvalidArg, "kvBlockSize must be >= 1"));
    }
    let Some(batch) = core_decode(payload, kv_block_size) else {
        return Ok(None);
    };
    let mut o = Object::new(env)?;
    o.set("dpRank", batch.dp_rank)?;
    let events = batch
        .events
        .iter()
        .map(|e| match e {
            Converted::Stored(s) => data_out(env, Some((s.parent_hash, &s.blocks)), None),
            Converted::Removed(h) => data_out(env, None, Some(h)),
            Converted::Cleared => data_out(env, None, None),
        })
        .collect::<Result<Vec<_>>>()?;
    o.set("events", events)?;
    o.set("rejected", Uint32Array::new(batch.rejected.to_vec()))?;
    Ok(Some(o))
}

#[napi(catch_unwind)]
pub fn peek_batch<'e>(env: &'e Env, payload: &[u8]) -> Result<Option<Object<'e>>> {
    let Ok((dp_rank, publisher_id)) = core_peek(payload) else {
        return Ok(None);
    };
    let mut o = Object::new(env)?;
    o.set("dpRank", dp_rank)?;
    o.set(
        "publisherId",
        publisher_id.map(|p| Uint8Array::new(p.to_vec())),
    )?;
    Ok(Some(o))
}

fn write_event(out: &mut Vec<u8>, ev: &JsRouterEvent, json: bool) -> Result<()> {
    let meta = meta_in(ev)?;
    let ev = router_event_in(ev)?;
    let data = ev.data.as_data_ref();
    if json {
        wire::write_event_json_meta(out, ev.worker_id, ev.event_id, ev.dp_rank, data, meta);
    } else {
        wire::write_event_msgpack_meta(out, ev.worker_id, ev.event_id, ev.dp_rank, data, meta);
    }
    Ok(())
}

#[napi(catch_unwind)]
pub fn encode_router_event(ev: JsRouterEvent, json: bool) -> Result<Buffer> {
    let mut out = Vec::new();
    write_event(&mut out, &ev, json)?;
    Ok(out.into())
}

/// A Dynamo 1.4+ payload: a msgpack array, or a JSON array, of RouterEvents.
#[napi(catch_unwind)]
pub fn encode_router_events(evs: Vec<JsRouterEvent>, json: bool) -> Result<Buffer> {
    let mut out = Vec::new();
    if json {
        out.push(b'[');
    } else {
        dynamo_kv_core::msgpack::Writer::new(&mut out).array(evs.len());
    }
    for (i, ev) in evs.iter().enumerate() {
        if json && i > 0 {
            out.push(b',');
        }
        write_event(&mut out, ev, json)?;
    }
    if json {
        out.push(b']');
    }
    Ok(out.into())
}

#[napi(catch_unwind)]
pub fn decode_router_event<'e>(env: &'e Env, bytes: &[u8], json: bool) -> Result<Object<'e>> {
    let list = decode_list(bytes, if json { 2 } else { 1 })?;
    if list.len() != 1 {
        // the core's message for a batch where one event was expected
        let e = wire::decode_router_event_encoded(bytes, if json { 2 } else { 1 })
            .err()
            .map_or_else(String::new, |e| e.0);
        return Err(Error::new(Status::InvalidArg, e));
    }
    router_event_out(env, &list[0].0, list[0].1)
}

fn decode_list(bytes: &[u8], format: u32) -> Result<Vec<wire::MetaEvent>> {
    wire::decode_router_events_encoded(bytes, format)
        .map_err(|e| Error::new(Status::InvalidArg, e.0))
}

/// Every RouterEvent of a payload (a Dynamo 1.0 event, or a Dynamo 1.4+ array), in `format`
/// (an index into ENCODED_FORMATS).
#[napi(catch_unwind)]
pub fn decode_router_events<'e>(
    env: &'e Env,
    bytes: &[u8],
    format: u32,
) -> Result<Vec<Object<'e>>> {
    decode_list(bytes, format)?
        .iter()
        .map(|(ev, meta)| router_event_out(env, ev, *meta))
        .collect()
}

fn router_event_out<'e>(env: &'e Env, ev: &RouterEvent, meta: EventMeta) -> Result<Object<'e>> {
    let mut inner = Object::new(env)?;
    inner.set("eventId", BigInt::from(ev.event_id))?;
    inner.set("dpRank", ev.dp_rank)?;
    inner.set("data", event_data_out(env, &ev.data)?)?;
    let mut o = Object::new(env)?;
    o.set("workerId", BigInt::from(ev.worker_id))?;
    if let Some(t) = meta.storage_tier {
        o.set("storageTier", t.name())?;
    }
    if let Some(d) = meta.residency_domain {
        o.set(
            "residencyDomain",
            match d {
                ResidencyDomain::Worker => "worker",
                ResidencyDomain::CacheOwner => "cache_owner",
            },
        )?;
    }
    o.set("event", inner)?;
    Ok(o)
}

fn events_out<'e>(env: &'e Env, evs: &[RouterEvent]) -> Result<Vec<Object<'e>>> {
    evs.iter()
        .map(|e| router_event_out(env, e, EventMeta::default()))
        .collect()
}

#[napi(catch_unwind)]
pub fn encode_envelope(
    publisher_id: BigInt,
    sequence: BigInt,
    published_at: BigInt,
    topic: String,
    payload: &[u8],
) -> Result<Buffer> {
    let mut out = Vec::with_capacity(payload.len() + 64);
    wire::write_envelope(
        &mut out,
        u64_arg("publisherId", &publisher_id)?,
        u64_arg("sequence", &sequence)?,
        u64_arg("publishedAt", &published_at)?,
        &topic,
        payload,
    );
    Ok(out.into())
}

#[napi(catch_unwind)]
pub fn encode_active_load(
    worker_id: BigInt,
    dp_rank: u32,
    active_decode_blocks: BigInt,
    active_prefill_tokens: Option<BigInt>,
) -> Result<Buffer> {
    let mut out = Vec::new();
    wire::write_active_load(
        &mut out,
        u64_arg("workerId", &worker_id)?,
        dp_rank,
        Some(u64_arg("activeDecodeBlocks", &active_decode_blocks)?),
        active_prefill_tokens
            .as_ref()
            .map(|p| u64_arg("activePrefillTokens", p))
            .transpose()?,
    );
    Ok(out.into())
}

/// Dynamo 1.4+'s ActiveLoad: `kv_used_blocks` after the 1.0 fields, every field nil when absent.
#[napi(catch_unwind)]
pub fn encode_active_load14(
    worker_id: BigInt,
    dp_rank: u32,
    active_decode_blocks: Option<BigInt>,
    active_prefill_tokens: Option<BigInt>,
    kv_used_blocks: Option<BigInt>,
) -> Result<Buffer> {
    let opt = |name: &str, v: &Option<BigInt>| v.as_ref().map(|x| u64_arg(name, x)).transpose();
    let mut out = Vec::new();
    wire::write_active_load_fields(
        &mut out,
        u64_arg("workerId", &worker_id)?,
        dp_rank,
        opt("activeDecodeBlocks", &active_decode_blocks)?,
        opt("activePrefillTokens", &active_prefill_tokens)?,
        Some(opt("kvUsedBlocks", &kv_used_blocks)?),
    );
    Ok(out.into())
}

/// Dynamo 1.4+'s endpoint-scoped subject of `topic`, each name segment percent-encoded.
#[napi(catch_unwind)]
pub fn endpoint_subject(
    namespace: String,
    component: String,
    endpoint: String,
    topic: String,
) -> String {
    wire::endpoint_subject(&namespace, &component, &endpoint, &topic)
}

/// Dynamo 1.4+'s `namespace.{ns}.component.{c}.endpoint.{e}`, each segment percent-encoded.
#[napi(catch_unwind)]
pub fn endpoint_subject_prefix(namespace: String, component: String, endpoint: String) -> String {
    wire::endpoint_subject_prefix(&namespace, &component, &endpoint)
}

#[napi(catch_unwind)]
pub fn jetstream_stream_name(namespace: String, component: String) -> String {
    wire::jetstream_stream_name(&namespace, &component)
}

#[napi(catch_unwind)]
pub fn kv_events_subject(namespace: String, component: String) -> String {
    wire::kv_events_subject(&namespace, &component)
}

#[napi(catch_unwind)]
pub fn kv_metrics_subject(namespace: String) -> String {
    wire::kv_metrics_subject(&namespace)
}

#[napi(catch_unwind)]
pub fn jetstream_subject(stream_name: String) -> String {
    wire::jetstream_subject(&stream_name)
}

// ------------------------------------------------------------------------------------------------
// discovery records (SPEC 5b, "Discovery")

#[napi(object)]
pub struct JsEndpoint {
    pub namespace: String,
    pub component: String,
    pub name: String,
}

#[napi(object)]
pub struct JsRecoveryTarget {
    pub namespace: String,
    pub component: String,
    pub endpoint: String,
    pub instance_id: BigInt,
    pub tcp: String,
}

#[napi(object)]
pub struct JsEventSourceSpec {
    pub endpoint: JsEndpoint,
    pub worker_id: BigInt,
    pub dp_rank: f64,
    pub publisher_id: BigInt,
    pub recovery_target: Option<Option<JsRecoveryTarget>>,
}

#[napi(object)]
pub struct JsEventChannelSpec {
    pub endpoint: JsEndpoint,
    pub topic: String,
    pub publisher_id: BigInt,
    pub zmq_endpoint: Option<Option<String>>,
}

#[napi(object)]
pub struct JsDiscoveryRecord {
    pub bucket: String,
    pub key: String,
    pub etcd_key: String,
    pub file_path: String,
    pub value: Buffer,
}

fn endpoint_in(e: &JsEndpoint) -> discovery::Endpoint {
    discovery::Endpoint {
        namespace: e.namespace.clone(),
        component: e.component.clone(),
        name: e.name.clone(),
    }
}

fn dp_rank_arg(v: f64) -> Result<u32> {
    if v.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&v) {
        Ok(v as u32)
    } else {
        Err(Error::new(
            Status::InvalidArg,
            format!("dp_rank {v} is not a u32"),
        ))
    }
}

fn record_out(
    r: std::result::Result<discovery::DiscoveryRecord, discovery::DiscoveryError>,
) -> Result<JsDiscoveryRecord> {
    let r = r.map_err(|e| Error::new(Status::InvalidArg, e.0))?;
    Ok(JsDiscoveryRecord {
        bucket: r.bucket.to_string(),
        etcd_key: r.etcd_key(),
        file_path: r.file_path(),
        key: r.key,
        value: r.value.into(),
    })
}

#[napi(catch_unwind)]
pub fn event_source_record(spec: JsEventSourceSpec) -> Result<JsDiscoveryRecord> {
    let recovery_target = match spec.recovery_target.flatten() {
        Some(t) => Some(discovery::RecoveryTarget {
            instance_id: u64_arg("instanceId", &t.instance_id)?,
            namespace: t.namespace,
            component: t.component,
            endpoint: t.endpoint,
            tcp: t.tcp,
        }),
        None => None,
    };
    record_out(discovery::event_source_record(&discovery::EventSource {
        endpoint: endpoint_in(&spec.endpoint),
        worker_id: u64_arg("workerId", &spec.worker_id)?,
        dp_rank: dp_rank_arg(spec.dp_rank)?,
        publisher_id: u64_arg("publisherId", &spec.publisher_id)?,
        recovery_target,
    }))
}

#[napi(catch_unwind)]
pub fn event_channel_record(spec: JsEventChannelSpec) -> Result<JsDiscoveryRecord> {
    let transport = match spec.zmq_endpoint.flatten() {
        Some(endpoint) => discovery::ChannelTransport::Zmq { endpoint },
        None => discovery::ChannelTransport::Nats,
    };
    record_out(discovery::event_channel_record(&discovery::EventChannel {
        endpoint: endpoint_in(&spec.endpoint),
        topic: spec.topic,
        publisher_id: u64_arg("publisherId", &spec.publisher_id)?,
        transport,
    }))
}

/// The core's names (shape `RawNames` of ts/core/binding.ts).
#[napi(object)]
pub struct RawNames {
    pub kv_events_topic: String,
    pub kv_metrics_topic: String,
    pub reject_reasons: Vec<String>,
    pub counter_names: Vec<String>,
    pub index_counter_names: Vec<String>,
    pub apply_outcomes: Vec<String>,
    pub encoded_formats: Vec<String>,
    pub storage_tiers: Vec<String>,
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[napi]
pub fn names() -> RawNames {
    RawNames {
        kv_events_topic: KV_EVENTS_TOPIC.into(),
        kv_metrics_topic: KV_METRICS_TOPIC.into(),
        reject_reasons: Reason::ALL.iter().map(|r| r.name().into()).collect(),
        counter_names: strings(&COUNTER_NAMES),
        index_counter_names: strings(&INDEX_COUNTER_NAMES),
        apply_outcomes: strings(&APPLY_OUTCOMES),
        encoded_formats: strings(&ENCODED_FORMATS),
        storage_tiers: strings(&STORAGE_TIERS),
    }
}

// ------------------------------------------------------------------------------------------------
// RawIngestor

#[napi(object)]
pub struct RawIngestorOptions {
    pub kv_block_size: u32,
    pub worker_id: BigInt,
    pub jetstream: bool,
    pub max_dp_ranks: u32,
    pub dp_ranks: Option<Option<Uint32Array>>,
    pub local_indexer_buffer_size: u32,
    /// `dynamo-1.4` instead of `dynamo-1.0`.
    pub wire14: Option<bool>,
    /// Fixed publisher ids: `publisher_id_ranks[i]` gets `publisher_id_values[i]`.
    pub publisher_id_ranks: Option<Vec<u32>>,
    pub publisher_id_values: Option<Vec<BigInt>>,
    /// The seed of the other ranks' publisher ids.
    pub publisher_seed: Option<BigInt>,
}

/// An ingestor and the memory it reported, shared with the RawLocalIndexer handle that
/// `localIndexer()` returns; `None` once closed.
struct Shared {
    ingestor: Option<Ingestor>,
    memory: MemoryReport,
}

impl Shared {
    fn get(&mut self, what: &str) -> Result<(&mut Ingestor, &mut MemoryReport)> {
        match self.ingestor.as_mut() {
            Some(ing) => Ok((ing, &mut self.memory)),
            None => Err(closed(what)),
        }
    }

    fn close(&mut self, env: &Env) {
        self.ingestor = None;
        release_memory(env, &mut self.memory);
    }
}

fn closed(what: &str) -> Error {
    Error::new(Status::GenericFailure, format!("{what} is closed"))
}

/// Outputs are handed over as copies in buffers V8 owns: a buffer over Rust memory is freed only
/// by a finalizer, which Node runs on a later event-loop turn, so a synchronous loop would pile
/// them up (SPEC 8).
#[napi(custom_finalize)]
pub struct RawIngestor {
    shared: Rc<RefCell<Shared>>,
    /// This ingestor's handle for `ingestPacked` (src/ingest_fast.rs).
    handle: f64,
}

impl ObjectFinalize for RawIngestor {
    fn finalize(self, env: Env) -> Result<()> {
        ingest_fast::unregister(self.handle);
        // the last holder (this or its local indexer handle) gives the report back
        if Rc::strong_count(&self.shared) == 1 {
            self.shared.borrow_mut().close(&env);
        }
        Ok(())
    }
}

#[napi]
impl RawIngestor {
    #[napi(constructor, catch_unwind)]
    pub fn new(options: RawIngestorOptions) -> Result<Self> {
        let cfg = IngestorConfig {
            kv_block_size: options.kv_block_size,
            worker_id: u64_arg("workerId", &options.worker_id)?,
            mode: if options.jetstream {
                Mode::JetStream
            } else {
                Mode::EventPlane
            },
            max_dp_ranks: options.max_dp_ranks,
            dp_ranks: options.dp_ranks.flatten().map(|r| r.to_vec()),
            local_indexer: (options.local_indexer_buffer_size > 0)
                .then_some(options.local_indexer_buffer_size as usize),
            wire: if options.wire14.unwrap_or(false) {
                Wire::Dynamo14
            } else {
                Wire::Dynamo10
            },
            publisher_ids: options
                .publisher_id_ranks
                .unwrap_or_default()
                .into_iter()
                .zip(options.publisher_id_values.unwrap_or_default().iter())
                .map(|(r, v)| Ok((r, u64_arg("publisherIds", v)?)))
                .collect::<Result<_>>()?,
            publisher_seed: options
                .publisher_seed
                .as_ref()
                .map(|s| u64_arg("publisherSeed", s))
                .transpose()?
                .unwrap_or(0),
        };
        let inner = Ingestor::new(cfg).map_err(|e| {
            Error::new(
                Status::InvalidArg,
                format!("invalid ingestor option: {e:?}"),
            )
        })?;
        let shared = Rc::new(RefCell::new(Shared {
            ingestor: Some(inner),
            memory: MemoryReport::default(),
        }));
        let handle = ingest_fast::register(&shared);
        Ok(RawIngestor { shared, handle })
    }

    /// Runs `f` on the ingestor, then reports its memory (the estimate is O(ranks), cheap next to
    /// any call that changes it).
    fn call<T>(&self, env: &Env, f: impl FnOnce(&mut Ingestor) -> T) -> Result<T> {
        let mut shared = self.shared.borrow_mut();
        let (ing, memory) = shared.get("Ingestor")?;
        let r = f(ing);
        report_memory(env, memory, ing.approx_bytes());
        Ok(r)
    }

    fn read<T>(&self, f: impl FnOnce(&Ingestor) -> T) -> Result<T> {
        match self.shared.borrow().ingestor.as_ref() {
            Some(ing) => Ok(f(ing)),
            None => Err(closed("Ingestor")),
        }
    }

    /// The handle `ingestPacked` finds this ingestor by.
    #[napi]
    pub fn handle(&self) -> f64 {
        self.handle
    }

    #[napi(catch_unwind)]
    pub fn ingest<'e>(
        &mut self,
        env: &'e Env,
        payload: &[u8],
        now_ms: f64,
    ) -> Result<BufferSlice<'e>> {
        let out = self.call(env, |ing| ing.ingest(payload, now_arg(now_ms)))?;
        BufferSlice::copy_from(env, out)
    }

    /// The hot path: the packed output copied into `out` at `offset` (the caller's reusable arena)
    /// and its length returned, or, when it does not fit there, the output itself as a new Buffer.
    #[napi(catch_unwind)]
    pub fn ingest_into<'e>(
        &mut self,
        env: &'e Env,
        payload: &[u8],
        now_ms: f64,
        mut out: Uint8ArraySlice,
        offset: u32,
    ) -> Result<Either<i64, BufferSlice<'e>>> {
        self.call(env, |ing| {
            let packed = ing.ingest_packed(payload, now_arg(now_ms));
            // SAFETY: JavaScript is blocked in this call, and `out` is the TS layer's own arena,
            // never the payload.
            let written = copy_out(packed, unsafe { out.as_mut() }, offset as usize);
            if written >= 0 {
                Ok(Either::A(written))
            } else {
                BufferSlice::copy_from(env, packed).map(Either::B)
            }
        })?
    }

    #[allow(clippy::too_many_arguments)]
    #[napi(catch_unwind)]
    pub fn stored<'e>(
        &mut self,
        env: &'e Env,
        token_ids: &[u32],
        block_hashes: &[u64],
        block_size: u32,
        parent_hash: Option<BigInt>,
        lora_name: Option<String>,
        block_mm_infos: Option<Vec<Option<JsBlockExtraInfo>>>,
        dp_rank: u32,
        now_ms: f64,
        cache_salt: Option<String>,
        eagle: Option<bool>,
    ) -> Result<BufferSlice<'e>> {
        let parent = parent_hash
            .as_ref()
            .map(|p| u64_arg("parentHash", p))
            .transpose()?;
        let mm = mm_list_in(block_mm_infos)?;
        let out = self.call(env, |ing| {
            ing.stored_with(
                token_ids,
                block_hashes,
                block_size as u64,
                parent,
                StoreHashing {
                    lora_name: lora_name.as_deref(),
                    cache_salt: cache_salt.as_deref(),
                    eagle: eagle.unwrap_or(false),
                },
                mm,
                dp_rank,
                now_arg(now_ms),
            )
        })?;
        BufferSlice::copy_from(env, out)
    }

    #[napi(catch_unwind)]
    pub fn removed<'e>(
        &mut self,
        env: &'e Env,
        block_hashes: &[u64],
        dp_rank: u32,
        now_ms: f64,
    ) -> Result<BufferSlice<'e>> {
        let out = self.call(env, |ing| {
            ing.removed(block_hashes, dp_rank, now_arg(now_ms))
        })?;
        BufferSlice::copy_from(env, out)
    }

    #[napi(catch_unwind)]
    pub fn cleared<'e>(
        &mut self,
        env: &'e Env,
        dp_rank: u32,
        now_ms: f64,
    ) -> Result<BufferSlice<'e>> {
        let out = self.call(env, |ing| ing.cleared(dp_rank, now_arg(now_ms)))?;
        BufferSlice::copy_from(env, out)
    }

    #[napi]
    pub fn rank_allowed(&self, dp_rank: u32) -> Result<bool> {
        self.read(|ing| ing.rank_allowed(dp_rank))
    }

    #[napi]
    pub fn next_event_id(&self, dp_rank: u32) -> Result<u64> {
        self.read(|ing| ing.next_event_id(dp_rank))
    }

    /// The publisher id of the rank's envelopes.
    #[napi]
    pub fn publisher_id(&self, dp_rank: u32) -> Result<BigInt> {
        self.read(|ing| BigInt::from(ing.publisher_id(dp_rank)))
    }

    #[napi]
    pub fn counters(&self) -> Result<BigUint64Array> {
        self.read(|ing| BigUint64Array::new(ing.counters().to_vec()))
    }

    /// A handle on the ingestor's local indexer (null when it has none).
    #[napi]
    pub fn local_indexer(&self) -> Result<Option<RawLocalIndexer>> {
        let has = self.read(|ing| ing.local_indexer().is_some())?;
        Ok(has.then(|| RawLocalIndexer {
            inner: LocalSource::Ingestor(self.shared.clone()),
            memory: MemoryReport::default(),
            replies: HashMap::new(),
            next_reply: 0,
        }))
    }

    /// Frees the ingestor and its local indexer now, and gives their memory report back; later
    /// calls (here and through the local indexer handle) fail. Idempotent.
    #[napi]
    pub fn close(&mut self, env: &Env) {
        self.shared.borrow_mut().close(env);
    }
}

// ------------------------------------------------------------------------------------------------
// RawRadixIndex and RawLocalIndexer: the same methods, each converting its arguments and calling
// the core's IndexAccess on the index it holds.

fn apply_result(r: std::result::Result<u32, wire::WireError>) -> Result<u32> {
    r.map_err(|e| Error::new(Status::InvalidArg, e.0))
}

fn head_args(head: &[u64]) -> Result<(u64, u64, u64)> {
    match head {
        [worker_id, event_id, parent, ..] => Ok((*worker_id, *event_id, *parent)),
        _ => Err(Error::new(
            Status::InvalidArg,
            "head must hold [workerId, eventId, parentHash]",
        )),
    }
}

fn first<'a>(name: &str, values: &'a [u64], n: u32) -> Result<&'a [u64]> {
    values.get(..n as usize).ok_or_else(|| {
        Error::new(
            Status::InvalidArg,
            format!("{name} holds fewer than {n} values"),
        )
    })
}

#[allow(clippy::too_many_arguments)]
fn apply_stored<I: IndexAccess>(
    index: &mut I,
    head: &[u64],
    dp_rank: u32,
    has_parent: bool,
    block_hashes: &[u64],
    tokens_hashes: &[u64],
    n: u32,
    block_mm_infos: Option<Vec<Option<JsBlockExtraInfo>>>,
) -> Result<u32> {
    let (worker_id, event_id, parent) = head_args(head)?;
    let mm = mm_list_in(block_mm_infos)?;
    Ok(index.apply_stored(
        worker_id,
        event_id,
        dp_rank,
        has_parent.then_some(parent),
        first("blockHashes", block_hashes, n)?,
        first("tokensHashes", tokens_hashes, n)?,
        mm,
    ) as u32)
}

fn apply_removed<I: IndexAccess>(
    index: &mut I,
    head: &[u64],
    dp_rank: u32,
    hashes: &[u64],
    n: u32,
) -> Result<u32> {
    let (worker_id, event_id, _) = head_args(head)?;
    let hashes = first("blockHashes", hashes, n)?;
    Ok(index.apply_parts(worker_id, event_id, dp_rank, wire::DataRef::Removed(hashes)) as u32)
}

fn apply_cleared<I: IndexAccess>(index: &mut I, head: &[u64], dp_rank: u32) -> Result<u32> {
    let (worker_id, event_id, _) = head_args(head)?;
    Ok(index.apply_parts(worker_id, event_id, dp_rank, wire::DataRef::Cleared) as u32)
}

#[allow(clippy::too_many_arguments)]
fn find_for_tokens<I: IndexAccess>(
    index: &mut I,
    tokens: &[u32],
    kv_block_size: u32,
    lora_name: Option<String>,
    block_mm_infos: Option<Vec<Option<JsBlockExtraInfo>>>,
    cache_salt: Option<String>,
    eagle: Option<bool>,
    early_exit: bool,
    out: &mut [u8],
) -> Result<i64> {
    let mm = mm_list_in(block_mm_infos)?;
    index
        .find_matches_for_tokens_into(
            tokens,
            kv_block_size,
            &hash_options(&lora_name, &mm, &cache_salt, eagle),
            early_exit,
            out,
        )
        .ok_or_else(|| Error::new(Status::InvalidArg, "kvBlockSize must be >= 1"))
}

/// The blocks an event applies: the work MemoryReport::due counts.
fn event_work(ev: &RouterEvent) -> usize {
    match &ev.data {
        EventData::Stored { blocks, .. } => blocks.len(),
        EventData::Removed { block_hashes } => block_hashes.len(),
        EventData::Cleared => 1,
    }
}

/// About the blocks an encoded event applies (a block is at least 16 bytes on either wire).
fn encoded_work(payload: &[u8]) -> usize {
    payload.len() / 16
}

/// Tells V8 about the native memory an object holds (see MemoryReport).
fn report_memory(env: &Env, memory: &mut MemoryReport, bytes: usize) {
    if let Some(delta) = memory.change(bytes) {
        if env.adjust_external_memory(delta).is_ok() {
            memory.reported(delta);
        }
    }
}

fn release_memory(env: &Env, memory: &mut MemoryReport) {
    let delta = memory.release();
    if delta != 0 {
        let _ = env.adjust_external_memory(delta);
    }
}

#[napi(custom_finalize)]
pub struct RawRadixIndex {
    inner: RadixIndex,
    memory: MemoryReport,
    /// The handle `findMatchesPacked` finds `inner` by, once `handle()` was asked (-1 before, and
    /// -inf once closed: a closed index is not entered again).
    handle: f64,
}

impl ObjectFinalize for RawRadixIndex {
    fn finalize(mut self, env: Env) -> Result<()> {
        if self.handle >= 0.0 {
            index_fast::unregister(self.handle);
        }
        release_memory(&env, &mut self.memory);
        Ok(())
    }
}

impl Default for RawRadixIndex {
    fn default() -> Self {
        Self::new()
    }
}

#[napi]
impl RawRadixIndex {
    #[napi(constructor)]
    pub fn new() -> Self {
        RawRadixIndex {
            inner: RadixIndex::new(),
            memory: MemoryReport::default(),
            handle: -1.0,
        }
    }

    /// The handle `findMatchesPacked` finds this index by (src/index_fast.rs), entered on the
    /// first call: only then does the index sit where it stays, boxed inside its JavaScript object.
    #[napi]
    pub fn handle(&mut self) -> f64 {
        if self.handle == -1.0 {
            // SAFETY: `inner` stays at this address until the finalizer, which unregisters first;
            // `close()` replaces its value in place.
            self.handle = unsafe { index_fast::register(&mut self.inner) };
        }
        self.handle
    }

    fn applied(&mut self, env: &Env, work: usize) {
        if self.memory.due(work) {
            report_memory(env, &mut self.memory, self.inner.approx_bytes());
        }
    }

    /// Frees the index now and gives its memory report back (the public layer refuses later
    /// calls; here they see an empty index). Idempotent.
    #[napi]
    pub fn close(&mut self, env: &Env) {
        self.inner = RadixIndex::new();
        release_memory(env, &mut self.memory);
        if self.handle >= 0.0 {
            index_fast::unregister(self.handle);
        }
        // never entered again: findMatchesPacked answers `RadixIndex is closed` from now on
        self.handle = f64::NEG_INFINITY;
    }

    #[allow(clippy::too_many_arguments)]
    #[napi(catch_unwind)]
    pub fn apply_stored(
        &mut self,
        env: &Env,
        head: &[u64],
        dp_rank: u32,
        has_parent: bool,
        block_hashes: &[u64],
        tokens_hashes: &[u64],
        n: u32,
        block_mm_infos: Option<Vec<Option<JsBlockExtraInfo>>>,
    ) -> Result<u32> {
        let r = apply_stored(
            &mut self.inner,
            head,
            dp_rank,
            has_parent,
            block_hashes,
            tokens_hashes,
            n,
            block_mm_infos,
        );
        self.applied(env, n as usize);
        r
    }

    #[napi(catch_unwind)]
    pub fn apply_removed(
        &mut self,
        env: &Env,
        head: &[u64],
        dp_rank: u32,
        block_hashes: &[u64],
        n: u32,
    ) -> Result<u32> {
        let r = apply_removed(&mut self.inner, head, dp_rank, block_hashes, n);
        self.applied(env, n as usize);
        r
    }

    #[napi(catch_unwind)]
    pub fn apply_cleared(&mut self, env: &Env, head: &[u64], dp_rank: u32) -> Result<u32> {
        let r = apply_cleared(&mut self.inner, head, dp_rank);
        self.applied(env, 1);
        r
    }

    /// The object form (tests and tools; the TS layer flattens events for apply_stored & co).
    #[napi(catch_unwind)]
    pub fn apply_event(&mut self, env: &Env, ev: JsRouterEvent) -> Result<u32> {
        let meta = meta_in(&ev)?;
        let ev = router_event_in(&ev)?;
        let r = self.inner.apply_with_meta(&ev, meta) as u32;
        self.applied(env, event_work(&ev));
        Ok(r)
    }

    #[napi(catch_unwind)]
    pub fn apply_encoded(&mut self, env: &Env, payload: &[u8], format: u32) -> Result<u32> {
        let r = apply_result(self.inner.apply_encoded(payload, format).map(|o| o as u32));
        self.applied(env, encoded_work(payload));
        r
    }

    /// Matches written into `out` (a buffer the caller reuses): no allocation per query.
    #[napi(catch_unwind)]
    pub fn find_matches(
        &mut self,
        tokens_hashes: &[u64],
        early_exit: bool,
        mut out: Uint8ArraySlice,
    ) -> i64 {
        // SAFETY: JavaScript is blocked in this call and `out` is the caller's scratch.
        let out = unsafe { out.as_mut() };
        self.inner.find_matches_into(tokens_hashes, early_exit, out)
    }

    #[allow(clippy::too_many_arguments)]
    #[napi(catch_unwind)]
    pub fn find_matches_for_tokens(
        &mut self,
        tokens: &[u32],
        kv_block_size: u32,
        lora_name: Option<String>,
        block_mm_infos: Option<Vec<Option<JsBlockExtraInfo>>>,
        early_exit: bool,
        mut out: Uint8ArraySlice,
        cache_salt: Option<String>,
        eagle: Option<bool>,
    ) -> Result<i64> {
        // SAFETY: as in find_matches
        let out = unsafe { out.as_mut() };
        find_for_tokens(
            &mut self.inner,
            tokens,
            kv_block_size,
            lora_name,
            block_mm_infos,
            cache_salt,
            eagle,
            early_exit,
            out,
        )
    }

    #[napi(catch_unwind)]
    pub fn remove_worker(&mut self, env: &Env, worker_id: BigInt) -> Result<()> {
        self.inner.remove_worker(u64_arg("workerId", &worker_id)?);
        report_memory(env, &mut self.memory, self.inner.approx_bytes());
        Ok(())
    }

    #[napi(catch_unwind)]
    pub fn remove_worker_dp_rank(
        &mut self,
        env: &Env,
        worker_id: BigInt,
        dp_rank: u32,
    ) -> Result<()> {
        self.inner
            .remove_worker_dp_rank(u64_arg("workerId", &worker_id)?, dp_rank);
        report_memory(env, &mut self.memory, self.inner.approx_bytes());
        Ok(())
    }

    #[napi(catch_unwind)]
    pub fn dump<'e>(&self, env: &'e Env) -> Result<Vec<Object<'e>>> {
        events_out(env, &self.inner.dump(None))
    }

    #[napi]
    pub fn workers(&self) -> BigUint64Array {
        BigUint64Array::new(self.inner.workers())
    }

    #[napi]
    pub fn size(&self) -> f64 {
        self.inner.size() as f64
    }

    #[napi]
    pub fn counters(&self) -> BigUint64Array {
        BigUint64Array::new(self.inner.counters().to_vec())
    }
}

/// A local indexer of its own, or the one inside an ingestor (shared with its RawIngestor, which
/// reports the memory of both); Closed once this handle is closed.
enum LocalSource {
    Own(Box<LocalIndexer>),
    Ingestor(Rc<RefCell<Shared>>),
    Closed,
}

#[napi(custom_finalize)]
pub struct RawLocalIndexer {
    inner: LocalSource,
    /// the report of an indexer of its own (one inside an ingestor reports through Shared)
    memory: MemoryReport,
    /// open reply cursors by id (replyOpen..., replyNext, replyClose)
    replies: HashMap<u32, ReplyCursor>,
    next_reply: u32,
}

/// Open reply cursors per handle: beyond this, opening one fails (a caller that never closes them).
const MAX_REPLIES: usize = 1024;

impl ObjectFinalize for RawLocalIndexer {
    fn finalize(mut self, env: Env) -> Result<()> {
        self.close(&env);
        Ok(())
    }
}

#[napi]
impl RawLocalIndexer {
    #[napi(constructor)]
    pub fn new(buffer_size: u32) -> Self {
        RawLocalIndexer {
            inner: LocalSource::Own(Box::new(LocalIndexer::new(buffer_size as usize))),
            memory: MemoryReport::default(),
            replies: HashMap::new(),
            next_reply: 0,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&LocalIndexer) -> T) -> Result<T> {
        match &self.inner {
            LocalSource::Own(l) => Ok(f(l)),
            LocalSource::Ingestor(shared) => match shared.borrow().ingestor.as_ref() {
                Some(ing) => ing.local_indexer().map(f).ok_or_else(no_local),
                None => Err(closed("Ingestor")),
            },
            LocalSource::Closed => Err(closed("LocalIndexer")),
        }
    }

    fn with_mut<T>(&mut self, f: impl FnOnce(&mut LocalIndexer) -> T) -> Result<T> {
        match &mut self.inner {
            LocalSource::Own(l) => Ok(f(l)),
            LocalSource::Ingestor(shared) => {
                let mut shared = shared.borrow_mut();
                let (ing, _) = shared.get("Ingestor")?;
                ing.local_indexer_mut().map(f).ok_or_else(no_local)
            }
            LocalSource::Closed => Err(closed("LocalIndexer")),
        }
    }

    /// Reports the memory after `work` blocks were applied or removed through this handle.
    fn applied(&mut self, env: &Env, work: usize) -> Result<()> {
        match &self.inner {
            LocalSource::Own(l) => {
                if self.memory.due(work) {
                    report_memory(env, &mut self.memory, l.approx_bytes());
                }
            }
            LocalSource::Ingestor(shared) => {
                let mut shared = shared.borrow_mut();
                let (ing, memory) = shared.get("Ingestor")?;
                if memory.due(work) {
                    report_memory(env, memory, ing.approx_bytes());
                }
            }
            LocalSource::Closed => {}
        }
        Ok(())
    }

    fn close(&mut self, env: &Env) {
        if let LocalSource::Ingestor(shared) = &self.inner {
            // the last holder gives the ingestor's report back
            if Rc::strong_count(shared) == 1 {
                shared.borrow_mut().close(env);
            }
        }
        self.inner = LocalSource::Closed;
        self.replies = HashMap::new();
        release_memory(env, &mut self.memory);
    }

    fn add_reply(&mut self, c: ReplyCursor) -> Result<u32> {
        if self.replies.len() >= MAX_REPLIES {
            return Err(Error::new(
                Status::GenericFailure,
                format!("LocalIndexer: {MAX_REPLIES} reply cursors are open (close them)"),
            ));
        }
        while self.replies.contains_key(&self.next_reply) {
            self.next_reply = self.next_reply.wrapping_add(1);
        }
        let id = self.next_reply;
        self.next_reply = self.next_reply.wrapping_add(1);
        self.replies.insert(id, c);
        Ok(id)
    }

    /// Frees an indexer of its own now and gives its memory report back; one inside an ingestor
    /// is only detached from this handle (it lives until the ingestor is closed). Later calls
    /// through this handle fail. Idempotent.
    #[napi(js_name = "close")]
    pub fn close_js(&mut self, env: &Env) {
        self.close(env);
    }

    #[allow(clippy::too_many_arguments)]
    #[napi(catch_unwind)]
    pub fn apply_stored(
        &mut self,
        env: &Env,
        head: &[u64],
        dp_rank: u32,
        has_parent: bool,
        block_hashes: &[u64],
        tokens_hashes: &[u64],
        n: u32,
        block_mm_infos: Option<Vec<Option<JsBlockExtraInfo>>>,
    ) -> Result<u32> {
        let r = self.with_mut(|l| {
            apply_stored(
                l,
                head,
                dp_rank,
                has_parent,
                block_hashes,
                tokens_hashes,
                n,
                block_mm_infos,
            )
        })?;
        self.applied(env, n as usize)?;
        r
    }

    #[napi(catch_unwind)]
    pub fn apply_removed(
        &mut self,
        env: &Env,
        head: &[u64],
        dp_rank: u32,
        block_hashes: &[u64],
        n: u32,
    ) -> Result<u32> {
        let r = self.with_mut(|l| apply_removed(l, head, dp_rank, block_hashes, n))?;
        self.applied(env, n as usize)?;
        r
    }

    #[napi(catch_unwind)]
    pub fn apply_cleared(&mut self, env: &Env, head: &[u64], dp_rank: u32) -> Result<u32> {
        let r = self.with_mut(|l| apply_cleared(l, head, dp_rank))?;
        self.applied(env, 1)?;
        r
    }

    /// The object form (tests and tools; the TS layer flattens events for apply_stored & co).
    #[napi(catch_unwind)]
    pub fn apply_event(&mut self, env: &Env, ev: JsRouterEvent) -> Result<u32> {
        let meta = meta_in(&ev)?;
        let ev = router_event_in(&ev)?;
        let r = self.with_mut(|l| l.apply_with_meta(&ev, meta) as u32)?;
        self.applied(env, event_work(&ev))?;
        Ok(r)
    }

    #[napi(catch_unwind)]
    pub fn apply_encoded(&mut self, env: &Env, payload: &[u8], format: u32) -> Result<u32> {
        let r =
            self.with_mut(|l| apply_result(l.apply_encoded(payload, format).map(|o| o as u32)))?;
        self.applied(env, encoded_work(payload))?;
        r
    }

    /// Matches written into `out` (a buffer the caller reuses): no allocation per query.
    #[napi(catch_unwind)]
    pub fn find_matches(
        &mut self,
        tokens_hashes: &[u64],
        early_exit: bool,
        mut out: Uint8ArraySlice,
    ) -> Result<i64> {
        // SAFETY: JavaScript is blocked in this call and `out` is the caller's scratch.
        let out = unsafe { out.as_mut() };
        self.with_mut(|l| l.find_matches_into(tokens_hashes, early_exit, out))
    }

    #[allow(clippy::too_many_arguments)]
    #[napi(catch_unwind)]
    pub fn find_matches_for_tokens(
        &mut self,
        tokens: &[u32],
        kv_block_size: u32,
        lora_name: Option<String>,
        block_mm_infos: Option<Vec<Option<JsBlockExtraInfo>>>,
        early_exit: bool,
        mut out: Uint8ArraySlice,
        cache_salt: Option<String>,
        eagle: Option<bool>,
    ) -> Result<i64> {
        // SAFETY: as in find_matches
        let out = unsafe { out.as_mut() };
        self.with_mut(|l| {
            find_for_tokens(
                l,
                tokens,
                kv_block_size,
                lora_name,
                block_mm_infos,
                cache_salt,
                eagle,
                early_exit,
                out,
            )
        })?
    }

    #[napi(catch_unwind)]
    pub fn remove_worker(&mut self, env: &Env, worker_id: BigInt) -> Result<()> {
        let id = u64_arg("workerId", &worker_id)?;
        self.with_mut(|l| l.index.remove_worker(id))?;
        self.applied(env, usize::MAX)
    }

    #[napi(catch_unwind)]
    pub fn remove_worker_dp_rank(
        &mut self,
        env: &Env,
        worker_id: BigInt,
        dp_rank: u32,
    ) -> Result<()> {
        let id = u64_arg("workerId", &worker_id)?;
        self.with_mut(|l| l.index.remove_worker_dp_rank(id, dp_rank))?;
        self.applied(env, usize::MAX)
    }

    #[napi(catch_unwind)]
    pub fn dump<'e>(&self, env: &'e Env) -> Result<Vec<Object<'e>>> {
        events_out(env, &self.with(|l| l.index.dump(None))?)
    }

    #[napi]
    pub fn workers(&self) -> Result<BigUint64Array> {
        Ok(BigUint64Array::new(self.with(|l| l.index.workers())?))
    }

    #[napi]
    pub fn size(&self) -> Result<f64> {
        self.with(|l| l.index.size() as f64)
    }

    #[napi]
    pub fn counters(&self) -> Result<BigUint64Array> {
        Ok(BigUint64Array::new(
            self.with(|l| l.index.counters().to_vec())?,
        ))
    }

    #[napi(catch_unwind)]
    pub fn events_in_range<'e>(
        &self,
        env: &'e Env,
        dp_rank: u32,
        start: Option<BigInt>,
        end: Option<BigInt>,
    ) -> Result<Object<'e>> {
        let start = start.as_ref().map(|s| u64_arg("start", s)).transpose()?;
        let end = end.as_ref().map(|e| u64_arg("end", e)).transpose()?;
        let result = self.with(|l| l.events_in_range(dp_rank, start, end))?;
        range_result_out(env, result)
    }

    /// eventsInRange's answer as the recovery response JSON (SPEC 7), written by the core in one call:
    /// no event crosses into JavaScript as an object.
    #[napi(catch_unwind)]
    pub fn events_in_range_json(
        &self,
        dp_rank: u32,
        start: Option<BigInt>,
        end: Option<BigInt>,
    ) -> Result<Buffer> {
        let start = start.as_ref().map(|s| u64_arg("start", s)).transpose()?;
        let end = end.as_ref().map(|e| u64_arg("end", e)).transpose()?;
        let mut out = Vec::new();
        self.with(|l| write_range_result_json(&mut out, &l.events_in_range(dp_rank, start, end)))?;
        Ok(out.into())
    }

    /// Opens a cursor over eventsInRangeJson's body, read by replyNext: a dump is written from the
    /// index chunk by chunk, never whole.
    #[napi(catch_unwind)]
    pub fn range_reply_open(
        &mut self,
        dp_rank: u32,
        start: Option<BigInt>,
        end: Option<BigInt>,
    ) -> Result<u32> {
        let start = start.as_ref().map(|s| u64_arg("start", s)).transpose()?;
        let end = end.as_ref().map(|e| u64_arg("end", e)).transpose()?;
        let c = self.with(|l| l.range_reply(dp_rank, start, end))?;
        self.add_reply(c)
    }

    /// Opens a cursor over the `{"TreeDump":[...]}` body of one dp rank's dump, or every rank's.
    #[napi(catch_unwind)]
    pub fn dump_reply_open(&mut self, dp_rank: Option<u32>) -> Result<u32> {
        let c = self.with(|l| l.dump_reply(dp_rank))?;
        self.add_reply(c)
    }

    /// The next chunk of an open cursor (exactly `max_bytes` but the last), null after the last
    /// (the cursor is then closed). Fails when the index changed under an unfinished dump. The
    /// chunk is a V8-owned copy: it goes with the next garbage collection, not a finalizer's turn.
    #[napi(catch_unwind)]
    pub fn reply_next<'e>(
        &mut self,
        env: &'e Env,
        cursor: u32,
        max_bytes: u32,
    ) -> Result<Option<BufferSlice<'e>>> {
        let Some(mut c) = self.replies.remove(&cursor) else {
            return Err(Error::new(
                Status::InvalidArg,
                format!("LocalIndexer: no open reply cursor {cursor}"),
            ));
        };
        match self.with(|l| l.reply_next(&mut c, max_bytes as usize))? {
            Ok(Some(chunk)) => {
                self.replies.insert(cursor, c);
                BufferSlice::copy_from(env, chunk).map(Some)
            }
            Ok(None) => Ok(None),
            Err(_) => Err(Error::new(
                Status::GenericFailure,
                "LocalIndexer: the index changed since the dump was opened",
            )),
        }
    }

    /// Forgets a cursor (unknown ids are ignored).
    #[napi]
    pub fn reply_close(&mut self, cursor: u32) {
        self.replies.remove(&cursor);
    }
}

fn no_local() -> Error {
    Error::new(Status::GenericFailure, "the ingestor has no local indexer")
}

fn range_result_out(env: &Env, result: RangeResult) -> Result<Object<'_>> {
    let mut o = Object::new(env)?;
    match result {
        RangeResult::Events(evs) => {
            o.set("kind", "Events")?;
            o.set("events", events_out(env, &evs)?)?;
        }
        RangeResult::TreeDump(evs) => {
            o.set("kind", "TreeDump")?;
            o.set("events", events_out(env, &evs)?)?;
        }
        RangeResult::TooNew {
            requested_start,
            requested_end,
            newest_available,
        } => {
            o.set("kind", "TooNew")?;
            o.set("requestedStart", BigInt::from(requested_start))?;
            o.set("requestedEnd", BigInt::from(requested_end))?;
            o.set("newestAvailable", BigInt::from(newest_available))?;
        }
        RangeResult::InvalidRange { start_id, end_id } => {
            o.set("kind", "InvalidRange")?;
            o.set("startId", BigInt::from(start_id))?;
            o.set("endId", BigInt::from(end_id))?;
        }
        RangeResult::Error(message) => {
            o.set("kind", "Error")?;
            o.set("message", message)?;
        }
    }
    Ok(o)
}

// ------------------------------------------------------------------------------------------------
// the indexer service's /query body

/// The common /query body read from its bytes (dynamo_kv_core::query): the number of token ids, all
/// written to `tokens`; -1 for any other body; -(2 + n) when its n token ids do not fit in `tokens`.
/// `fields` (8 u32) receives the byte ranges of model_name, routing_group, lora_name and cache_salt.
#[napi(catch_unwind)]
pub fn scan_query_body(
    body: &[u8],
    mut tokens: Uint32ArraySlice,
    mut fields: Uint32ArraySlice,
) -> Result<i64> {
    // SAFETY: JavaScript is blocked in this call and both arrays are the caller's scratch.
    let (tokens, fields) = unsafe { (tokens.as_mut(), fields.as_mut()) };
    let fields: &mut [u32; 2 * query::FIELD_COUNT] = fields
        .get_mut(..2 * query::FIELD_COUNT)
        .and_then(|f| f.try_into().ok())
        .ok_or_else(|| Error::new(Status::InvalidArg, "fields must hold 8 values"))?;
    Ok(match query::scan_query(body, tokens, fields) {
        query::Scanned::Tokens(n) => n as i64,
        query::Scanned::TooMany(n) => -2 - n as i64,
        query::Scanned::Other => -1,
    })
}

// ---------------------------------------------------------------------------------------------------
// The router's one-call paths (core select.rs): the default selector's pass, and in-order applies.

fn too_short(name: &str) -> Error {
    Error::new(
        Status::InvalidArg,
        format!("{name} is shorter than the candidates"),
    )
}

/// Scores the candidates (ascending (workerIds[i], dpRanks[i]), the first n) on `tokens_hashes` and
/// applies the default cost rule; writes overlap, tree size and cost at out[offset..], out[offset + n..]
/// and out[offset + 2n..]. Returns the lowest-cost candidate (the first of equals), -1 when n is 0.
#[allow(clippy::too_many_arguments)]
#[napi(catch_unwind)]
pub fn select_best(
    index: &mut RawRadixIndex,
    tokens_hashes: &[u64],
    request_blocks: u32,
    overlap_weight: f64,
    worker_ids: &[u64],
    dp_ranks: &[u32],
    decode_blocks: &[f64],
    n: u32,
    mut out: Float64ArraySlice,
    offset: u32,
) -> Result<i32> {
    // SAFETY: JavaScript is blocked in this call and `out` is the caller's scratch.
    let out = unsafe { out.as_mut() };
    let n = n as usize;
    let ids = worker_ids.get(..n).ok_or_else(|| too_short("workerIds"))?;
    let ranks = dp_ranks.get(..n).ok_or_else(|| too_short("dpRanks"))?;
    let decode = decode_blocks
        .get(..n)
        .ok_or_else(|| too_short("decodeBlocks"))?;
    let region = out
        .get_mut(offset as usize..)
        .and_then(|o| o.get_mut(..3 * n))
        .ok_or_else(|| too_short("out"))?;
    let (overlap, rest) = region.split_at_mut(n);
    let (tree_size, cost) = rest.split_at_mut(n);
    let matches = index.inner.find_matches_ref(tokens_hashes, false);
    let best = dynamo_kv_core::select::select_best(
        matches,
        request_blocks,
        overlap_weight,
        &dynamo_kv_core::select::Candidates {
            worker_ids: ids,
            dp_ranks: ranks,
            decode_blocks: decode,
        },
        dynamo_kv_core::select::Scored {
            overlap,
            tree_size,
            cost,
        },
    );
    Ok(best.map_or(-1, |b| b as i32))
}

#[napi]
pub struct RawRankGate {
    inner: dynamo_kv_core::select::RankGate,
}

impl Default for RawRankGate {
    fn default() -> Self {
        Self::new()
    }
}

#[napi]
impl RawRankGate {
    #[napi(constructor)]
    pub fn new() -> Self {
        RawRankGate {
            inner: dynamo_kv_core::select::RankGate::new(),
        }
    }

    #[napi(catch_unwind)]
    pub fn arm(&mut self, worker_id: BigInt, dp_rank: u32, next: BigInt) -> Result<()> {
        self.inner.arm(
            u64_arg("workerId", &worker_id)?,
            dp_rank,
            u64_arg("next", &next)?,
        );
        Ok(())
    }

    #[napi(catch_unwind)]
    pub fn disarm(&mut self, worker_id: BigInt, dp_rank: u32) -> Result<Option<BigInt>> {
        Ok(self
            .inner
            .disarm(u64_arg("workerId", &worker_id)?, dp_rank)
            .map(BigInt::from))
    }

    #[napi(catch_unwind)]
    pub fn remove_worker(&mut self, worker_id: BigInt) -> Result<()> {
        self.inner.remove_worker(u64_arg("workerId", &worker_id)?);
        Ok(())
    }

    #[napi]
    pub fn take_seen(&mut self) -> BigUint64Array {
        BigUint64Array::new(self.inner.take_seen())
    }

    /// RankGate::apply into `index`; `out` holds at least 6 values.
    #[napi(catch_unwind)]
    pub fn apply(
        &mut self,
        env: &Env,
        index: &mut RawRadixIndex,
        payload: &[u8],
        mut out: BigUint64ArraySlice,
    ) -> Result<u32> {
        // SAFETY: as in select_best
        let out = unsafe { out.as_mut() };
        let out: &mut [u64; dynamo_kv_core::select::GATE_OUT_LEN] = out
            .get_mut(..dynamo_kv_core::select::GATE_OUT_LEN)
            .and_then(|o| o.try_into().ok())
            .ok_or_else(|| Error::new(Status::InvalidArg, "out must hold 6 values"))?;
        let code = self.inner.apply(&mut index.inner, payload, out);
        if code < dynamo_kv_core::select::GATE_PASS {
            index.applied(env, encoded_work(payload));
        }
        Ok(code)
    }
}
