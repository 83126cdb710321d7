//! napi bindings over dynamo-kv-core: the raw interface of ts/core/binding.ts, no logic of its own.
//! Arguments are validated by the TypeScript wrappers first; what still arrives malformed here is
//! turned into a JS error, and `catch_unwind` turns a would-be panic into a JS error, never an abort.

use dynamo_kv_core::convert::{decode_engine_batch as core_decode, Converted};
use dynamo_kv_core::engine::peek_batch as core_peek;
use dynamo_kv_core::hash::compute_block_hashes as core_hashes;
use std::cell::RefCell;
use std::rc::Rc;

use dynamo_kv_core::index::{ApplyOutcome, Match, RadixIndex};
use dynamo_kv_core::ingest::{Ingestor, IngestorConfig, Mode};
use dynamo_kv_core::local::{LocalIndexer, RangeResult};
use dynamo_kv_core::wire::{self, BlockExtraInfo, EventData, MmObject, RouterEvent, StoredBlock};
use napi::bindgen_prelude::*;
use napi_derive::napi;

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
) -> Result<BigUint64Array> {
    let mm = mm_list_in(block_mm_infos)?;
    Ok(BigUint64Array::new(core_hashes(
        tokens,
        kv_block_size as usize,
        lora_name.as_deref(),
        mm.as_deref(),
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

#[napi(catch_unwind)]
pub fn encode_router_event(ev: JsRouterEvent, json: bool) -> Result<Buffer> {
    let ev = router_event_in(&ev)?;
    let mut out = Vec::new();
    if json {
        wire::write_router_event_json(&mut out, &ev);
    } else {
        wire::write_router_event_msgpack(&mut out, &ev);
    }
    Ok(out.into())
}

#[napi(catch_unwind)]
pub fn decode_router_event<'e>(env: &'e Env, bytes: &[u8], json: bool) -> Result<Object<'e>> {
    let decoded = if json {
        wire::decode_router_event_json(bytes)
    } else {
        wire::decode_router_event_msgpack(bytes)
    };
    let ev = decoded.map_err(|e| Error::new(Status::InvalidArg, e.0))?;
    router_event_out(env, &ev)
}

fn router_event_out<'e>(env: &'e Env, ev: &RouterEvent) -> Result<Object<'e>> {
    let mut inner = Object::new(env)?;
    inner.set("eventId", BigInt::from(ev.event_id))?;
    inner.set("dpRank", ev.dp_rank)?;
    inner.set("data", event_data_out(env, &ev.data)?)?;
    let mut o = Object::new(env)?;
    o.set("workerId", BigInt::from(ev.worker_id))?;
    o.set("event", inner)?;
    Ok(o)
}

fn events_out<'e>(env: &'e Env, evs: &[RouterEvent]) -> Result<Vec<Object<'e>>> {
    evs.iter().map(|e| router_event_out(env, e)).collect()
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

#[napi(catch_unwind)]
pub fn jetstream_stream_name(namespace: String, component: String) -> String {
    wire::jetstream_stream_name(&namespace, &component)
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
}

#[napi]
pub struct RawIngestor {
    /// Shared with the RawLocalIndexer handle that `localIndexer()` returns.
    inner: Rc<RefCell<Ingestor>>,
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
        };
        let inner = Ingestor::new(cfg).map_err(|e| {
            Error::new(
                Status::InvalidArg,
                format!("invalid ingestor option: {e:?}"),
            )
        })?;
        Ok(RawIngestor {
            inner: Rc::new(RefCell::new(inner)),
        })
    }

    #[napi(catch_unwind)]
    pub fn ingest(&mut self, payload: &[u8], now_ms: f64) -> Buffer {
        self.inner
            .borrow_mut()
            .ingest(payload, now_arg(now_ms))
            .into()
    }

    /// The hot path: the packed output copied into `out` at `offset` (the caller's reusable
    /// arena). Returns its length, or minus the length needed when it does not fit; then
    /// `takeOutput` hands over the same output (until the next call).
    #[napi(catch_unwind)]
    pub fn ingest_into(
        &mut self,
        payload: &[u8],
        now_ms: f64,
        mut out: Uint8ArraySlice,
        offset: u32,
    ) -> i64 {
        let mut inner = self.inner.borrow_mut();
        let packed = inner.ingest_packed(payload, now_arg(now_ms));
        // SAFETY: JavaScript is blocked in this call, and `out` is the TS layer's own arena, never
        // the payload.
        copy_out(packed, unsafe { out.as_mut() }, offset as usize)
    }

    #[napi(catch_unwind)]
    pub fn take_output(&mut self, mut out: Uint8ArraySlice, offset: u32) -> i64 {
        // SAFETY: as in ingest_into
        copy_out(
            self.inner.borrow().last_packed(),
            unsafe { out.as_mut() },
            offset as usize,
        )
    }

    #[allow(clippy::too_many_arguments)]
    #[napi(catch_unwind)]
    pub fn stored(
        &mut self,
        token_ids: &[u32],
        block_hashes: &[u64],
        block_size: u32,
        parent_hash: Option<BigInt>,
        lora_name: Option<String>,
        block_mm_infos: Option<Vec<Option<JsBlockExtraInfo>>>,
        dp_rank: u32,
        now_ms: f64,
    ) -> Result<Buffer> {
        let parent = parent_hash
            .as_ref()
            .map(|p| u64_arg("parentHash", p))
            .transpose()?;
        let mm = mm_list_in(block_mm_infos)?;
        Ok(self
            .inner
            .borrow_mut()
            .stored(
                token_ids,
                block_hashes,
                block_size as u64,
                parent,
                lora_name.as_deref(),
                mm,
                dp_rank,
                now_arg(now_ms),
            )
            .into())
    }

    #[napi(catch_unwind)]
    pub fn removed(&mut self, block_hashes: &[u64], dp_rank: u32, now_ms: f64) -> Buffer {
        self.inner
            .borrow_mut()
            .removed(block_hashes, dp_rank, now_arg(now_ms))
            .into()
    }

    #[napi(catch_unwind)]
    pub fn cleared(&mut self, dp_rank: u32, now_ms: f64) -> Buffer {
        self.inner
            .borrow_mut()
            .cleared(dp_rank, now_arg(now_ms))
            .into()
    }

    #[napi]
    pub fn rank_allowed(&self, dp_rank: u32) -> bool {
        self.inner.borrow().rank_allowed(dp_rank)
    }

    #[napi]
    pub fn next_event_id(&self, dp_rank: u32) -> u64 {
        self.inner.borrow().next_event_id(dp_rank)
    }

    #[napi]
    pub fn counters(&self) -> BigUint64Array {
        BigUint64Array::new(self.inner.borrow().counters().to_vec())
    }

    #[napi]
    pub fn take_warnings(&mut self) -> Vec<String> {
        self.inner.borrow_mut().take_warnings()
    }

    /// A handle on the ingestor's local indexer (null when it has none).
    #[napi]
    pub fn local_indexer(&self) -> Option<RawLocalIndexer> {
        self.inner
            .borrow()
            .local_indexer()
            .is_some()
            .then(|| RawLocalIndexer {
                inner: LocalSource::Ingestor(self.inner.clone()),
                memory: MemoryReport::default(),
            })
    }
}

// ------------------------------------------------------------------------------------------------
// RawRadixIndex and RawLocalIndexer

fn outcome_code(o: ApplyOutcome) -> u32 {
    o as u32
}

/// Writes matches (layout in ts/core/binding.ts) into `out`: bytes written, or minus the bytes needed.
fn matches_out(matches: &[Match], out: &mut [u8]) -> i64 {
    let need = 4 + 24 * matches.len();
    let Some(dst) = out.get_mut(..need) else {
        return -(need as i64);
    };
    dst[..4].copy_from_slice(&(matches.len() as u32).to_le_bytes());
    for (m, rec) in matches.iter().zip(dst[4..].chunks_exact_mut(24)) {
        rec[..8].copy_from_slice(&m.worker_id.to_le_bytes());
        rec[8..12].copy_from_slice(&m.dp_rank.to_le_bytes());
        rec[12..16].copy_from_slice(&m.score.to_le_bytes());
        rec[16..].copy_from_slice(&m.tree_size.to_le_bytes());
    }
    need as i64
}

#[allow(clippy::too_many_arguments)]
fn matches_for_tokens(
    index: &mut RadixIndex,
    tokens: &[u32],
    kv_block_size: u32,
    lora_name: Option<String>,
    block_mm_infos: Option<Vec<Option<JsBlockExtraInfo>>>,
    early_exit: bool,
    out: &mut [u8],
) -> Result<i64> {
    if kv_block_size == 0 {
        return Err(Error::new(Status::InvalidArg, "kvBlockSize must be >= 1"));
    }
    let mm = mm_list_in(block_mm_infos)?;
    let hashes = core_hashes(
        tokens,
        kv_block_size as usize,
        lora_name.as_deref(),
        mm.as_deref(),
    );
    Ok(matches_out(
        index.find_matches_ref(&hashes, early_exit),
        out,
    ))
}

/// The native memory an index holds, reported to V8 (napi_adjust_external_memory) so that the GC
/// sees it: otherwise an index dropped by JavaScript is collected only when the JS heap itself
/// fills, and a process that creates indexes keeps hundreds of MB of dead ones.
#[derive(Default)]
struct MemoryReport {
    reported: i64,
    calls: u32,
}

impl MemoryReport {
    /// Every 1024 applies: the estimate is O(workers), so not on every call.
    fn due(&mut self) -> bool {
        self.calls = self.calls.wrapping_add(1);
        self.calls.is_multiple_of(1024)
    }

    fn set(&mut self, env: &Env, bytes: usize) {
        let now = bytes.min(i64::MAX as usize) as i64;
        // changes under 1 MB are not worth a call
        if (now - self.reported).abs() >= 1 << 20
            && env.adjust_external_memory(now - self.reported).is_ok()
        {
            self.reported = now;
        }
    }

    fn release(&mut self, env: &Env) {
        if self.reported != 0 {
            let _ = env.adjust_external_memory(-self.reported);
            self.reported = 0;
        }
    }
}

#[napi(custom_finalize)]
pub struct RawRadixIndex {
    inner: RadixIndex,
    memory: MemoryReport,
}

impl ObjectFinalize for RawRadixIndex {
    fn finalize(mut self, env: Env) -> Result<()> {
        self.memory.release(&env);
        Ok(())
    }
}

/// The methods RawRadixIndex and RawLocalIndexer share, over whichever index they reach.
macro_rules! index_methods {
    ($ty:ident, $get:ident, $get_mut:ident) => {
        #[napi]
        impl $ty {
            fn report_memory(&mut self, env: &Env) {
                let bytes = self.$get(|i| i.index_ref().approx_bytes());
                self.memory.set(env, bytes);
            }

            #[napi(catch_unwind)]
            pub fn apply_event(&mut self, env: &Env, ev: JsRouterEvent) -> Result<u32> {
                let ev = router_event_in(&ev)?;
                let out = self.$get_mut(|i| outcome_code(i.apply_event(&ev)));
                if self.memory.due() {
                    self.report_memory(env);
                }
                Ok(out)
            }

            #[napi(catch_unwind)]
            pub fn apply_encoded(&mut self, env: &Env, payload: &[u8], format: u32) -> Result<u32> {
                let out = self.$get_mut(|i| apply_encoded_any(i, payload, format));
                if self.memory.due() {
                    self.report_memory(env);
                }
                out
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
                self.$get_mut(|i| {
                    matches_out(
                        i.index_mut().find_matches_ref(tokens_hashes, early_exit),
                        out,
                    )
                })
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
            ) -> Result<i64> {
                // SAFETY: as in find_matches
                let out = unsafe { out.as_mut() };
                self.$get_mut(|i| {
                    matches_for_tokens(
                        i.index_mut(),
                        tokens,
                        kv_block_size,
                        lora_name,
                        block_mm_infos,
                        early_exit,
                        out,
                    )
                })
            }

            #[napi(catch_unwind)]
            pub fn remove_worker(&mut self, env: &Env, worker_id: BigInt) -> Result<()> {
                let id = u64_arg("workerId", &worker_id)?;
                self.$get_mut(|i| i.index_mut().remove_worker(id));
                self.report_memory(env);
                Ok(())
            }

            #[napi(catch_unwind)]
            pub fn remove_worker_dp_rank(
                &mut self,
                env: &Env,
                worker_id: BigInt,
                dp_rank: u32,
            ) -> Result<()> {
                let id = u64_arg("workerId", &worker_id)?;
                self.$get_mut(|i| i.index_mut().remove_worker_dp_rank(id, dp_rank));
                self.report_memory(env);
                Ok(())
            }

            #[napi(catch_unwind)]
            pub fn dump<'e>(&self, env: &'e Env) -> Result<Vec<Object<'e>>> {
                let evs = self.$get(|i| i.index_ref().dump(None));
                events_out(env, &evs)
            }

            #[napi]
            pub fn workers(&self) -> BigUint64Array {
                BigUint64Array::new(self.$get(|i| i.index_ref().workers()))
            }

            #[napi]
            pub fn size(&self) -> f64 {
                self.$get(|i| i.index_ref().size()) as f64
            }

            #[napi]
            pub fn counters(&self) -> BigUint64Array {
                BigUint64Array::new(self.$get(|i| i.index_ref().counters().to_vec()))
            }
        }
    };
}

/// Access to a RadixIndex, whether standalone or inside a local indexer.
trait IndexAccess {
    fn index_ref(&self) -> &RadixIndex;
    fn index_mut(&mut self) -> &mut RadixIndex;
    fn apply_event(&mut self, ev: &RouterEvent) -> ApplyOutcome;
}

impl IndexAccess for RadixIndex {
    fn index_ref(&self) -> &RadixIndex {
        self
    }
    fn index_mut(&mut self) -> &mut RadixIndex {
        self
    }
    fn apply_event(&mut self, ev: &RouterEvent) -> ApplyOutcome {
        RadixIndex::apply_event(self, ev)
    }
}

impl IndexAccess for LocalIndexer {
    fn index_ref(&self) -> &RadixIndex {
        &self.index
    }
    fn index_mut(&mut self) -> &mut RadixIndex {
        &mut self.index
    }
    /// Applies and buffers.
    fn apply_event(&mut self, ev: &RouterEvent) -> ApplyOutcome {
        LocalIndexer::apply_event(self, ev)
    }
}

fn apply_encoded_any<I: IndexAccess>(index: &mut I, payload: &[u8], format: u32) -> Result<u32> {
    let ev = match format {
        0 => wire::decode_router_event_envelope(payload),
        1 => wire::decode_router_event_msgpack(payload),
        2 => wire::decode_router_event_json(payload),
        _ => {
            return Err(Error::new(
                Status::InvalidArg,
                "format must be 0 (envelope), 1 (msgpack) or 2 (json)",
            ))
        }
    }
    .map_err(|e| Error::new(Status::InvalidArg, e.0))?;
    Ok(outcome_code(index.apply_event(&ev)))
}

#[napi]
impl RawRadixIndex {
    #[napi(constructor)]
    pub fn new() -> Self {
        RawRadixIndex {
            inner: RadixIndex::new(),
            memory: MemoryReport::default(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&RadixIndex) -> T) -> T {
        f(&self.inner)
    }

    fn with_mut<T>(&mut self, f: impl FnOnce(&mut RadixIndex) -> T) -> T {
        f(&mut self.inner)
    }
}

index_methods!(RawRadixIndex, with, with_mut);

enum LocalSource {
    Own(LocalIndexer),
    Ingestor(Rc<RefCell<Ingestor>>),
}

#[napi(custom_finalize)]
pub struct RawLocalIndexer {
    inner: LocalSource,
    /// updated only by calls through this handle (an ingestor applying to its own indexer reports nothing)
    memory: MemoryReport,
}

impl ObjectFinalize for RawLocalIndexer {
    fn finalize(mut self, env: Env) -> Result<()> {
        self.memory.release(&env);
        Ok(())
    }
}

#[napi]
impl RawLocalIndexer {
    #[napi(constructor)]
    pub fn new(buffer_size: u32) -> Self {
        RawLocalIndexer {
            inner: LocalSource::Own(LocalIndexer::new(buffer_size.max(1) as usize)),
            memory: MemoryReport::default(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&LocalIndexer) -> T) -> T {
        match &self.inner {
            LocalSource::Own(l) => f(l),
            LocalSource::Ingestor(ing) => f(ing
                .borrow()
                .local_indexer()
                .expect("ingestor has a local indexer")),
        }
    }

    fn with_mut<T>(&mut self, f: impl FnOnce(&mut LocalIndexer) -> T) -> T {
        match &mut self.inner {
            LocalSource::Own(l) => f(l),
            LocalSource::Ingestor(ing) => f(ing
                .borrow_mut()
                .local_indexer_mut()
                .expect("ingestor has a local indexer")),
        }
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
        let result = self.with(|l| l.events_in_range(dp_rank, start, end));
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
}

index_methods!(RawLocalIndexer, with, with_mut);
