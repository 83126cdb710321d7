//! The core's router events against Dynamo 1.6.1's own router crate (`dynamo-kv-router =1.6.1`):
//! every payload the core's Ingestor emits is decoded with Dynamo's serde types exactly as a 1.6.1
//! router decodes it (a msgpack envelope whose payload is a msgpack array of RouterEvents), routed by
//! Dynamo's own tier rule (`RouterEvent::targets_primary`), applied to Dynamo's `RadixTree` (and to
//! the router's default indexer, `ThreadPoolIndexer` over `ConcurrentRadixTreeCompressed`) and to the
//! core's `RadixIndex`, and all answer the same queries. Where they must differ, a small test shows
//! each case and why.

#[path = "../../compat-dynamo-common/workload.rs"]
mod workload;

use std::collections::HashMap;

use dynamo_kv_core::convert::Wire;
use dynamo_kv_core::hash::{compute_block_hashes_with, BlockHashOptions};
use dynamo_kv_core::wire::{
    decode_router_event_envelope, decode_router_events_envelope, write_envelope,
    write_router_event_msgpack,
};
use dynamo_kv_core::{
    unpack, ApplyOutcome, EventData, IndexAccess, Ingestor, IngestorConfig, RadixIndex,
    RouterEvent, StoredBlock,
};
use dynamo_kv_router::indexer::KvIndexerInterface;
use dynamo_kv_router::protocols::{
    compute_block_hash_for_seq, BlockHashOptions as DynHashOptions, KvCacheEventData,
    KvCacheEventError, LocalBlockHash, RouterEvent as DynEvent, StorageTier,
};
use dynamo_kv_router::{ConcurrentRadixTreeCompressed, RadixTree, ThreadPoolIndexer};
use serde::Deserialize;
use workload::{Rng, Sequence, Workload, WorkloadConfig};

/// The event-plane envelope as Dynamo 1.6.1's runtime deserializes it (`EventEnvelope` in
/// dynamo-runtime: the payload is `bytes::Bytes`, a msgpack bin).
#[derive(Debug, Deserialize)]
struct EventEnvelope {
    publisher_id: u64,
    sequence: u64,
    published_at: u64,
    topic: String,
    payload: serde_bytes::ByteBuf,
}

const BLOCK_SIZE: u32 = 8;

fn config(seed: u64, batches: usize, salts: bool, duplicate_stores: bool) -> WorkloadConfig {
    WorkloadConfig {
        seed,
        batches,
        block_size: BLOCK_SIZE,
        workers: vec![
            (1, vec![0]),
            (7_000_000_000_123, vec![0, 1]),
            ((1 << 53) - 1, vec![0, 1, 2]),
        ],
        loras: vec![
            None,
            None,
            None,
            Some("adapter-a".into()),
            Some("lörä-日本".into()),
        ],
        salts: if salts {
            vec![None, None, Some("tenant-x".into()), Some("tenant-y".into())]
        } else {
            vec![None]
        },
        lower_tiers: true,
        duplicate_stores,
    }
}

fn ingestor(worker_id: u64, wire: Wire) -> Ingestor {
    let mut cfg = IngestorConfig::new(BLOCK_SIZE, worker_id);
    cfg.wire = wire;
    cfg.publisher_seed = worker_id ^ 0x5eed;
    Ingestor::new(cfg).unwrap()
}

/// Dynamo's decoded event in the core's terms, to compare the two decoders field by field.
fn from_dynamo(ev: &DynEvent) -> RouterEvent {
    let data = match &ev.event.data {
        KvCacheEventData::Stored(s) => EventData::Stored {
            parent_hash: s.parent_hash.map(|h| h.0),
            blocks: s
                .blocks
                .iter()
                .map(|b| StoredBlock {
                    block_hash: b.block_hash.0,
                    tokens_hash: b.tokens_hash.0,
                    mm_extra_info: None,
                })
                .collect(),
        },
        KvCacheEventData::Removed(r) => EventData::Removed {
            block_hashes: r.block_hashes.iter().map(|h| h.0).collect(),
        },
        KvCacheEventData::Cleared => EventData::Cleared,
    };
    RouterEvent {
        worker_id: ev.worker_id,
        event_id: ev.event.event_id,
        dp_rank: ev.event.dp_rank,
        data,
    }
}

fn same_outcome(dynamo: &Result<(), KvCacheEventError>, core: ApplyOutcome) -> bool {
    matches!(
        (dynamo, core),
        (Ok(()), ApplyOutcome::Applied)
            | (
                Err(KvCacheEventError::ParentBlockNotFound),
                ApplyOutcome::ParentNotFound
            )
            | (
                Err(KvCacheEventError::BlockNotFound),
                ApplyOutcome::BlockNotFound
            )
            | (
                Err(KvCacheEventError::InvalidBlockSequence),
                ApplyOutcome::InvalidBlockSequence
            )
    )
}

fn dyn_hashes(tokens: &[u32], lora: Option<&str>, salt: Option<&str>, eagle: bool) -> Vec<u64> {
    let opts = DynHashOptions {
        block_mm_infos: None,
        lora_name: lora,
        cache_namespace: salt,
        is_eagle: Some(eagle),
    };
    compute_block_hash_for_seq(tokens, BLOCK_SIZE, opts)
        .into_iter()
        .map(|h| h.0)
        .collect()
}

/// Both sides' block hashes for a query (LoRA, cache salt, and Eagle windows); they must be equal.
fn hashes(seq: &Sequence, eagle: bool) -> Vec<u64> {
    let core = compute_block_hashes_with(
        &seq.tokens,
        BLOCK_SIZE as usize,
        &BlockHashOptions {
            lora_name: seq.lora.as_deref(),
            cache_salt: seq.salt.as_deref(),
            eagle,
            ..Default::default()
        },
    );
    let dynamo = dyn_hashes(&seq.tokens, seq.lora.as_deref(), seq.salt.as_deref(), eagle);
    assert_eq!(
        core, dynamo,
        "block hashes differ for {seq:?} (eagle {eagle})"
    );
    core
}

/// `(worker_id, dp_rank, score)` with a non-zero score, sorted. (Dynamo 1.6.1's `RadixTree` leaves
/// `tree_sizes` out of its scores.)
type Scores = Vec<(u64, u32, u32)>;

fn dynamo_scores(tree: &RadixTree, q: &[u64]) -> Scores {
    let m = tree.find_matches(q.iter().map(|&h| LocalBlockHash(h)).collect(), false);
    let mut v: Scores = m
        .scores
        .iter()
        .filter(|(_, &s)| s > 0)
        .map(|(w, &s)| (w.worker_id, w.dp_rank, s))
        .collect();
    v.sort_unstable();
    v
}

fn sorted(m: &dynamo_kv_router::OverlapScores) -> Scores {
    let mut v: Scores = m
        .scores
        .iter()
        .filter(|(_, &s)| s > 0)
        .map(|(w, &s)| (w.worker_id, w.dp_rank, s))
        .collect();
    v.sort_unstable();
    v
}

fn core_scores(index: &mut RadixIndex, q: &[u64]) -> Scores {
    index
        .find_matches(q, false)
        .into_iter()
        .filter(|m| m.score > 0)
        .map(|m| (m.worker_id, m.dp_rank, m.score))
        .collect()
}

/// Queries: prefixes of stored requests (some with a diverging tail), random tokens, and stored
/// requests under another LoRA adapter or cache salt.
fn queries(rng: &mut Rng, w: &Workload) -> Vec<Sequence> {
    let bs = BLOCK_SIZE as usize;
    let mut out = Vec::new();
    for _ in 0..150 {
        let s = rng.pick(&w.sequences);
        let n = s.tokens.len() / bs;
        let mut q = s.clone();
        q.tokens.truncate(bs * (1 + rng.below(n)));
        if rng.chance(0.3) {
            q.tokens
                .extend((0..bs * (1 + rng.below(3))).map(|_| rng.token()));
        }
        if rng.chance(0.2) {
            q.tokens.extend((0..rng.below(bs)).map(|_| rng.token())); // a partial block hashes nothing
        }
        out.push(q);
    }
    for _ in 0..30 {
        let tokens = (0..bs * (1 + rng.below(8))).map(|_| rng.token()).collect();
        out.push(Sequence {
            tokens,
            lora: None,
            salt: None,
        });
    }
    for _ in 0..40 {
        let mut q = rng.pick(&w.sequences).clone();
        q.lora = rng.pick(&w.cfg.loras).clone();
        q.salt = rng.pick(&w.cfg.salts).clone();
        out.push(q);
    }
    out
}

/// The RouterEvents of one payload as a Dynamo 1.6.1 router decodes them: the envelope, then its
/// payload as `Vec<RouterEvent>`.
fn decode_1_6(p: &[u8]) -> (EventEnvelope, Vec<DynEvent>) {
    let env: EventEnvelope = rmp_serde::from_slice(p).expect("Dynamo 1.6.1 decodes the envelope");
    let events: Vec<DynEvent> = rmp_serde::from_slice(&env.payload)
        .expect("Dynamo 1.6.1 decodes the payload as Vec<RouterEvent>");
    (env, events)
}

/// A dynamo-1.0 payload re-wrapped with its one RouterEvent inside a one-element array.
fn one_element_array(p: &[u8]) -> Vec<u8> {
    let env: EventEnvelope = rmp_serde::from_slice(p).unwrap();
    let mut arr = vec![0x91];
    arr.extend_from_slice(&env.payload);
    let mut out = Vec::new();
    write_envelope(
        &mut out,
        env.publisher_id,
        env.sequence,
        env.published_at,
        &env.topic,
        &arr,
    );
    out
}

/// A worker key's published live blocks: block hash -> (parent, live children).
type Live = HashMap<u64, (Option<u64>, u32)>;

struct Run {
    /// Removes of a block the published stream still has children of (see `run`).
    inner_removes: usize,
    payloads: usize,
    events: usize,
    lower_tier_events: usize,
    stored_blocks: usize,
    compared: usize,
    nonzero: usize,
    outcomes: HashMap<String, usize>,
}

/// Feeds the workload through one Ingestor per worker with `wire`, decodes every payload (after
/// `wrap`) as Dynamo 1.6.1 does and with the core's decoder, applies both, and compares queries.
/// With `crtc`, the router's default indexer answers every query too. The published GPU stream is
/// also tracked per worker key to count inner removes (a remove of a block that still has stored
/// children). An engine that evicts leaf-first causes none, with two exceptions: the dynamo-1.0
/// profile resets one rank of a multi-rank worker by removing all its blocks in hash order (in one
/// event, so nothing is left behind), and the dynamo-1.4 profile, like Dynamo's publisher, counts a
/// re-announced block twice and holds back its first remove, so its parent's remove comes first.
fn run(w: &Workload, wire: Wire, wrap: fn(&[u8]) -> Vec<u8>, crtc: bool) -> Run {
    let mut ingestors: Vec<Ingestor> = w
        .cfg
        .workers
        .iter()
        .map(|(id, _)| ingestor(*id, wire))
        .collect();
    let mut tree = RadixTree::new();
    let mut index = RadixIndex::new();
    // The indexer a 1.6.1 router runs by default: the concurrent compressed tree behind a pool of
    // event threads (router_event_threads = 4), queried with the router's own request hashing.
    let router = ThreadPoolIndexer::new(ConcurrentRadixTreeCompressed::new(), 4, BLOCK_SIZE);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut rng = Rng::new(42);
    // per worker key: published live block -> (parent, live children)
    let mut published: HashMap<(u64, u32), Live> = HashMap::new();
    let mut r = Run {
        inner_removes: 0,
        payloads: 0,
        events: 0,
        lower_tier_events: 0,
        stored_blocks: 0,
        compared: 0,
        nonzero: 0,
        outcomes: HashMap::new(),
    };
    // per (worker, rank): the last event id and envelope sequence seen
    let mut last_id: HashMap<(u64, u32), u64> = HashMap::new();
    let mut next_seq: HashMap<(u64, u64), u64> = HashMap::new();
    for (i, batch) in w.batches.iter().enumerate() {
        let worker_id = w.cfg.workers[batch.worker].0;
        let now = 1_700_000_000_000 + i as u64;
        let out = unpack(&ingestors[batch.worker].ingest(&batch.bytes, now));
        for (reason, &n) in out.rejected.iter().enumerate() {
            if reason != dynamo_kv_core::Reason::FilteredTier as usize {
                assert_eq!(n, 0, "batch {i}: rejected reason {reason}");
            }
        }
        for (k, p) in out.payloads.iter().enumerate() {
            r.payloads += 1;
            let p = wrap(p);
            let (env, events) = decode_1_6(&p);
            assert_eq!(env.topic, "kv-events");
            assert_eq!(env.published_at, now);
            assert_eq!(Some(env.sequence), out.first_sequence.map(|s| s + k as u64));
            let publisher = ingestors[batch.worker].publisher_id(batch.dp_rank);
            assert_eq!(env.publisher_id, publisher);
            let seq = next_seq.entry((worker_id, publisher)).or_default();
            assert_eq!(
                env.sequence, *seq,
                "envelope sequences count per publisher from 0"
            );
            *seq += 1;
            let blocks: usize = events
                .iter()
                .map(|e| match &e.event.data {
                    KvCacheEventData::Stored(s) => s.blocks.len(),
                    KvCacheEventData::Removed(x) => x.block_hashes.len(),
                    KvCacheEventData::Cleared => 0,
                })
                .sum();
            assert!(!events.is_empty() && events.len() <= 128);
            assert!(
                events.len() == 1 || blocks <= 8192,
                "{} events, {blocks} blocks",
                events.len()
            );
            let core_events = decode_router_events_envelope(&p).expect("the core decodes it");
            assert_eq!(events.len(), core_events.len());
            for (ev, (core_ev, meta)) in events.into_iter().zip(core_events) {
                r.events += 1;
                assert_eq!(from_dynamo(&ev), core_ev, "the two decoders disagree");
                assert_eq!(
                    meta.storage_tier.map_or("device", |t| t.name()),
                    tier_name(&ev)
                );
                assert_eq!(ev.worker_id, worker_id);
                assert_eq!(ev.event.dp_rank, batch.dp_rank, "one envelope, one dp rank");
                let last = last_id
                    .entry((worker_id, batch.dp_rank))
                    .or_insert(match wire {
                        Wire::Dynamo10 => u64::MAX, // ids from 0
                        Wire::Dynamo14 => 0,        // ids from 1, as Dynamo's publishers number
                    });
                assert_eq!(
                    ev.event.event_id,
                    last.wrapping_add(1),
                    "ids of a rank never skip"
                );
                *last = ev.event.event_id;
                let primary = ev.targets_primary().unwrap();
                assert_eq!(primary, meta.targets_gpu_index(), "both route tiers alike");
                if let KvCacheEventData::Stored(s) = &ev.event.data {
                    for b in &s.blocks {
                        let info = &w.blocks[&b.block_hash.0];
                        let salt = if wire == Wire::Dynamo14 {
                            info.salt.as_deref()
                        } else {
                            None
                        };
                        let expect = dyn_hashes(&info.tokens, info.lora.as_deref(), salt, false);
                        assert_eq!(
                            vec![b.tokens_hash.0],
                            expect,
                            "tokens_hash of block {}",
                            b.block_hash.0
                        );
                        r.stored_blocks += 1;
                    }
                }
                let core_out = index.apply_with_meta(&core_ev, meta);
                if !primary {
                    // a lower-tier event: a 1.6.1 router indexes it apart from the GPU tree
                    r.lower_tier_events += 1;
                    assert_eq!(core_out, ApplyOutcome::Ignored);
                    continue;
                }
                let live = published
                    .entry((ev.worker_id, ev.event.dp_rank))
                    .or_default();
                match &ev.event.data {
                    KvCacheEventData::Stored(s) => {
                        let mut parent = s.parent_hash.map(|h| h.0);
                        for b in &s.blocks {
                            if let std::collections::hash_map::Entry::Vacant(e) =
                                live.entry(b.block_hash.0)
                            {
                                e.insert((parent, 0));
                                if let Some(e) = parent.and_then(|p| live.get_mut(&p)) {
                                    e.1 += 1;
                                }
                            }
                            parent = Some(b.block_hash.0);
                        }
                    }
                    KvCacheEventData::Removed(x) => {
                        for h in &x.block_hashes {
                            if let Some((parent, children)) = live.remove(&h.0) {
                                r.inner_removes += (children > 0) as usize;
                                if let Some(e) = parent.and_then(|p| live.get_mut(&p)) {
                                    e.1 -= 1;
                                }
                            }
                        }
                    }
                    KvCacheEventData::Cleared => live.clear(),
                }
                if crtc {
                    router.enqueue_event(ev.clone()).unwrap();
                }
                let dyn_out = tree.apply_event(ev);
                assert!(
                    same_outcome(&dyn_out, core_out),
                    "batch {i}: Dynamo {dyn_out:?}, core {core_out:?}"
                );
                *r.outcomes.entry(format!("{core_out:?}")).or_default() += 1;
            }
        }
        if (i + 1) % 1000 == 0 || i + 1 == w.batches.len() {
            rt.block_on(router.flush_and_wait()).unwrap();
            for q in queries(&mut rng, w) {
                hashes(&q, true); // Eagle windows hash alike on both sides too
                let h = hashes(&q, false);
                let d = dynamo_scores(&tree, &h);
                let c = core_scores(&mut index, &h);
                assert_eq!(d, c, "after batch {i}: scores differ for {q:?}");
                let salt = if wire == Wire::Dynamo14 {
                    q.salt.as_deref()
                } else {
                    None
                };
                if !crtc {
                    r.compared += 1;
                    r.nonzero += !c.is_empty() as usize;
                    continue;
                }
                let m = rt
                    .block_on(router.find_matches_for_request(
                        &q.tokens,
                        q.lora.as_deref(),
                        salt,
                        None,
                    ))
                    .unwrap();
                assert_eq!(
                    sorted(&m),
                    c,
                    "after batch {i}: the router's indexer differs for {q:?}"
                );
                r.compared += 1;
                r.nonzero += !c.is_empty() as usize;
            }
        }
    }
    // a worker leaving one dp rank, on both sides
    let (worker_id, _) = w.cfg.workers[2];
    tree.remove_worker_dp_rank(worker_id, 1);
    index.remove_worker_dp_rank(worker_id, 1);
    rt.block_on(async {
        router.remove_worker_dp_rank(worker_id, 1).await;
        router.flush_and_wait().await
    })
    .unwrap();
    for q in queries(&mut rng, w) {
        let h = hashes(&q, false);
        let c = core_scores(&mut index, &h);
        assert!(c.iter().all(|m| (m.0, m.1) != (worker_id, 1)));
        assert_eq!(
            dynamo_scores(&tree, &h),
            c,
            "after remove_worker_dp_rank: scores differ for {q:?}"
        );
        if crtc {
            let m = rt
                .block_on(router.find_matches(h.iter().map(|&x| LocalBlockHash(x)).collect()))
                .unwrap();
            assert_eq!(
                sorted(&m),
                c,
                "after remove_worker_dp_rank: the router's indexer differs"
            );
        }
    }
    r
}

/// Dynamo's storage tier of an event as the wire names it.
fn tier_name(ev: &DynEvent) -> &'static str {
    match ev.storage_tier {
        StorageTier::Device => "device",
        StorageTier::HostPinned => "host_pinned",
        StorageTier::Disk => "disk",
        StorageTier::External => "external",
    }
}

#[test]
fn ten_thousand_batches_of_the_dynamo_1_4_profile_decode_apply_and_match_as_in_dynamo_1_6_1() {
    // with re-announced blocks: Dynamo's RadixTree and the core agree even on the inner removes the
    // refcount dedup then publishes; the router's default indexer does not (see the class below)
    let w = Workload::generate(config(0x00d1_0161, 10_000, true, true));
    let r = run(&w, Wire::Dynamo14, |p| p.to_vec(), false);
    report("dynamo-1.4 profile, re-announced blocks", &w, &r);
    assert!(r.payloads > 9_000 && r.stored_blocks > 20_000);
    assert!(r.events > r.payloads, "some envelopes carry several events");
    assert!(
        r.lower_tier_events > 1_000,
        "offload tiers are published, beside the GPU tree"
    );
    assert!(r.inner_removes > 0, "the dedup published inner removes");
    assert!(
        r.nonzero * 2 > r.compared,
        "most queries must hit something to mean anything"
    );
    // leaf-first only: the router's default indexer (threads, concurrent compressed tree) agrees too
    let w = Workload::generate(config(0x00d1_0162, 10_000, true, false));
    let r = run(&w, Wire::Dynamo14, |p| p.to_vec(), true);
    report(
        "dynamo-1.4 profile, leaf-first, with the router's indexer",
        &w,
        &r,
    );
    assert_eq!(r.inner_removes, 0);
    assert!(r.payloads > 9_000 && r.stored_blocks > 20_000);
    assert!(
        r.nonzero * 2 > r.compared,
        "most queries must hit something to mean anything"
    );
}

fn report(what: &str, w: &Workload, r: &Run) {
    eprintln!(
        "dynamo 1.6.1 ({what}): {} batches, {} payloads, {} events ({} lower tier), \
         {} stored blocks, {} inner removes, outcomes {:?}, {} queries ({} with a match), workload {:?}",
        w.batches.len(),
        r.payloads,
        r.events,
        r.lower_tier_events,
        r.stored_blocks,
        r.inner_removes,
        r.outcomes,
        r.compared,
        r.nonzero,
        w.stats
    );
}

/// Before the dynamo-1.4 profile existed, this is how far a 1.6.1 router could read the core's
/// events: a dynamo-1.0 event inside a one-element array decodes (every field 1.6 added has a
/// default), and GPU-only 1.0 events index alike.
#[test]
fn dynamo_1_0_events_in_a_one_element_array_decode_apply_and_match_as_in_dynamo_1_6_1() {
    let w = Workload::generate(config(0x00d1_0161, 10_000, false, true));
    let r = run(&w, Wire::Dynamo10, one_element_array, true);
    report("1.0 events in arrays, with the router's indexer", &w, &r);
    // (its inner removes are one-rank resets of multi-rank workers: every block of the rank goes,
    // in ascending hash order, in one event, so nothing of the rank is left behind)
    assert!(r.payloads > 15_000 && r.stored_blocks > 20_000);
    assert!(
        r.nonzero * 2 > r.compared,
        "most queries must hit something to mean anything"
    );
}

// --- Why both wire profiles exist -----------------------------------------------------------------

/// A dynamo-1.0 payload (one RouterEvent map in the envelope) is rejected by a 1.6.1 router, which
/// reads the envelope payload as an array of events.
#[test]
fn dynamo_1_6_1_rejects_a_dynamo_1_0_payload() {
    let mut ing = ingestor(3, Wire::Dynamo10);
    let tokens: Vec<u32> = (0..16).collect();
    let out = unpack(&ing.stored(
        &tokens,
        &[501, 502],
        BLOCK_SIZE as u64,
        None,
        None,
        None,
        0,
        0,
    ));
    assert_eq!(out.payloads.len(), 1);
    let env: EventEnvelope = rmp_serde::from_slice(&out.payloads[0]).unwrap();
    assert!(
        rmp_serde::from_slice::<Vec<DynEvent>>(&env.payload).is_err(),
        "a single map is not Vec<RouterEvent>"
    );
    // the event itself is one 1.6.1 reads, which is what the one-element-array harness relies on
    let ev: DynEvent = rmp_serde::from_slice(&env.payload).unwrap();
    assert_eq!(ev.worker_id, 3);
    let mut msg = Vec::new();
    write_router_event_msgpack(
        &mut msg,
        &decode_router_event_envelope(&out.payloads[0]).unwrap(),
    );
    assert_eq!(msg, env.payload.to_vec());
}

// --- Where a Dynamo 1.6.1 router and the core's index answer differently, and why ---------------

/// Encodes a core event, decodes it with Dynamo 1.6.1's types (inside an array, as 1.6.1 reads
/// payloads) and applies it to both sides; returns both outcomes.
fn apply_both(
    tree: &mut RadixTree,
    index: &mut RadixIndex,
    ev: RouterEvent,
) -> (Result<(), KvCacheEventError>, ApplyOutcome) {
    let mut msg = vec![0x91];
    write_router_event_msgpack(&mut msg, &ev);
    let dyn_ev = rmp_serde::from_slice::<Vec<DynEvent>>(&msg)
        .unwrap()
        .remove(0);
    assert_eq!(from_dynamo(&dyn_ev), ev);
    (tree.apply_event(dyn_ev), index.apply_event(&ev))
}

fn agree(tree: &mut RadixTree, index: &mut RadixIndex, ev: RouterEvent) {
    let (d, c) = apply_both(tree, index, ev);
    assert!(same_outcome(&d, c), "Dynamo {d:?}, core {c:?}");
}

fn stored(worker_id: u64, parent: Option<u64>, blocks: &[(u64, u64)]) -> RouterEvent {
    RouterEvent {
        worker_id,
        event_id: 0,
        dp_rank: 0,
        data: EventData::Stored {
            parent_hash: parent,
            blocks: blocks
                .iter()
                .map(|&(block_hash, tokens_hash)| StoredBlock {
                    block_hash,
                    tokens_hash,
                    mm_extra_info: None,
                })
                .collect(),
        },
    }
}

fn removed(worker_id: u64, hashes: &[u64]) -> RouterEvent {
    RouterEvent {
        worker_id,
        event_id: 0,
        dp_rank: 0,
        data: EventData::Removed {
            block_hashes: hashes.to_vec(),
        },
    }
}

/// Class 1: a removed inner block. Dynamo 1.6.1's compressed tree truncates the worker's coverage of
/// the edge at the removed position and forgets the worker's later hashes on that edge (not on
/// child nodes: the TODO(CORRECTNESS) in its `apply_removed`); the core takes the worker off that
/// one node only. Both score the chain alike right after the remove; they part when the engine
/// re-stores the removed block (the core's worker is whole again, 1.6.1's stays cut) or refers to a
/// forgotten hash. Engines that evict leaf-first (the workload above) never get here.
#[test]
fn an_inner_remove_cuts_a_compressed_edge_in_dynamo_1_6_1() {
    let (mut tree, mut index) = (RadixTree::new(), RadixIndex::new());
    let q = [11, 12, 13];
    agree(
        &mut tree,
        &mut index,
        stored(1, None, &[(101, 11), (102, 12), (103, 13)]),
    );
    agree(
        &mut tree,
        &mut index,
        stored(2, None, &[(101, 11), (102, 12)]),
    ); // keeps 102 alive
    agree(&mut tree, &mut index, removed(1, &[102]));
    assert_eq!(dynamo_scores(&tree, &q), vec![(1, 0, 1), (2, 0, 2)]);
    assert_eq!(core_scores(&mut index, &q), vec![(1, 0, 1), (2, 0, 2)]);
    agree(&mut tree, &mut index, stored(1, Some(101), &[(102, 12)]));
    assert_eq!(
        dynamo_scores(&tree, &q),
        vec![(1, 0, 2), (2, 0, 2)],
        "1.6.1 forgot worker 1's 103"
    );
    assert_eq!(
        core_scores(&mut index, &q),
        vec![(1, 0, 3), (2, 0, 2)],
        "the core still holds 103 for worker 1"
    );
    let (d, c) = apply_both(&mut tree, &mut index, stored(1, Some(103), &[(104, 14)]));
    assert!(matches!(d, Err(KvCacheEventError::ParentBlockNotFound)));
    assert_eq!(c, ApplyOutcome::Applied);
}

/// Class 2: workers whose engines hash one token path to different block hashes (engines without a
/// fixed hash seed). Dynamo 1.6.1's compressed edges hold one block hash per position for every
/// worker, so a later worker's own hashes are not on the edge: its stores under them fail with
/// ParentBlockNotFound and its removes of them with BlockNotFound. The core keeps each worker's own
/// hashes per node. Dynamo's launchers fix the seed, so identical paths hash alike (the workload).
#[test]
fn per_worker_block_hashes_do_not_fit_dynamo_1_6_1_compressed_edges() {
    let (mut tree, mut index) = (RadixTree::new(), RadixIndex::new());
    agree(&mut tree, &mut index, stored(1, None, &[(101, 11)]));
    agree(&mut tree, &mut index, stored(2, None, &[(201, 11)])); // same tokens, another engine hash
    assert_eq!(dynamo_scores(&tree, &[11]), core_scores(&mut index, &[11]));
    let (d, c) = apply_both(&mut tree, &mut index, stored(2, Some(201), &[(202, 12)]));
    assert!(matches!(d, Err(KvCacheEventError::ParentBlockNotFound)));
    assert_eq!(c, ApplyOutcome::Applied);
    assert_eq!(dynamo_scores(&tree, &[11, 12]), vec![(1, 0, 1), (2, 0, 1)]);
    assert_eq!(
        core_scores(&mut index, &[11, 12]),
        vec![(1, 0, 1), (2, 0, 2)]
    );
    let (d, c) = apply_both(&mut tree, &mut index, removed(2, &[201]));
    assert!(
        matches!(d, Err(KvCacheEventError::BlockNotFound)),
        "1.6.1 keeps worker 2 on the node"
    );
    assert_eq!(c, ApplyOutcome::Applied);
    assert_eq!(dynamo_scores(&tree, &[11]), vec![(1, 0, 1), (2, 0, 1)]);
    assert_eq!(core_scores(&mut index, &[11]), vec![(1, 0, 1)]);
}

/// In the dynamo-1.4 profile an engine clear of one rank of a multi-rank worker is one `cleared`
/// event naming its residency domain, and both Dynamo 1.6.1 and the core clear only that rank
/// (1.0.2 would clear them all, which is why the 1.0 profile sends removes instead).
#[test]
fn a_one_rank_clear_of_the_dynamo_1_4_profile_clears_one_rank_in_dynamo_1_6_1() {
    let mut ing = ingestor(9, Wire::Dynamo14);
    let (mut tree, mut index) = (RadixTree::new(), RadixIndex::new());
    let tokens: Vec<u32> = (0..16).collect();
    let h = hashes(
        &Sequence {
            tokens: tokens.clone(),
            lora: None,
            salt: None,
        },
        false,
    );
    let feed = |out: Vec<u8>, tree: &mut RadixTree, index: &mut RadixIndex| {
        let out = unpack(&out);
        assert_eq!(out.payloads.len(), 1);
        let (_, events) = decode_1_6(&out.payloads[0]);
        let core = decode_router_events_envelope(&out.payloads[0]).unwrap();
        for (ev, (core_ev, meta)) in events.into_iter().zip(core) {
            let d = tree.apply_event(ev);
            let c = index.apply_with_meta(&core_ev, meta);
            assert!(same_outcome(&d, c), "Dynamo {d:?}, core {c:?}");
        }
    };
    for rank in [0, 1] {
        feed(
            ing.stored(
                &tokens,
                &[501, 502],
                BLOCK_SIZE as u64,
                None,
                None,
                None,
                rank,
                0,
            ),
            &mut tree,
            &mut index,
        );
    }
    let clear = ing.cleared(0, 0);
    let (_, events) = decode_1_6(&unpack(&clear).payloads[0]);
    assert!(matches!(events[0].event.data, KvCacheEventData::Cleared));
    feed(clear, &mut tree, &mut index);
    assert_eq!(dynamo_scores(&tree, &h), vec![(9, 1, 2)]);
    assert_eq!(core_scores(&mut index, &h), vec![(9, 1, 2)]);
}

/// Class 3, inside Dynamo 1.6.1 itself: after one worker key's inner remove (here rank 2 of worker 2
/// removes the root block while its descendants stay), the router's default indexer (the concurrent
/// compressed tree behind `ThreadPoolIndexer`) keeps crediting worker 2 rank 0 for a block it then
/// removed; Dynamo's single-threaded `RadixTree` and the core do not. Leaf-first streams (the
/// workloads above) agree on all three.
#[test]
fn after_an_inner_remove_dynamo_1_6_1_router_indexer_credits_a_removed_block() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let router = ThreadPoolIndexer::new(ConcurrentRadixTreeCompressed::new(), 1, BLOCK_SIZE);
    let (mut tree, mut index) = (RadixTree::new(), RadixIndex::new());
    let on = |w: u64, rank: u32, mut ev: RouterEvent| {
        ev.worker_id = w;
        ev.dp_rank = rank;
        ev
    };
    let events = [
        on(1, 0, stored(0, None, &[(1, 11), (2, 92), (3, 93)])),
        on(1, 0, stored(0, None, &[(1, 11), (4, 12), (5, 13), (6, 14)])),
        on(
            2,
            0,
            stored(0, None, &[(1, 11), (4, 12), (5, 13), (6, 14), (7, 15)]),
        ),
        on(2, 2, stored(0, None, &[(1, 11), (4, 12), (5, 13), (8, 16)])),
        on(2, 2, removed(0, &[1])), // inner: rank 2 keeps 4, 5, 8
        on(2, 0, removed(0, &[4])),
    ];
    for ev in events {
        let mut msg = vec![0x91];
        write_router_event_msgpack(&mut msg, &ev);
        let dyn_ev = rmp_serde::from_slice::<Vec<DynEvent>>(&msg)
            .unwrap()
            .remove(0);
        router.enqueue_event(dyn_ev.clone()).unwrap();
        let (d, c) = (tree.apply_event(dyn_ev), index.apply_event(&ev));
        assert!(same_outcome(&d, c), "Dynamo {d:?}, core {c:?}");
    }
    rt.block_on(router.flush_and_wait()).unwrap();
    let q = [11, 12];
    let crtc = rt
        .block_on(router.find_matches(q.iter().map(|&h| LocalBlockHash(h)).collect()))
        .unwrap();
    assert_eq!(
        sorted(&crtc),
        vec![(1, 0, 2), (2, 0, 2)],
        "worker 2 rank 0 removed block 4"
    );
    assert_eq!(dynamo_scores(&tree, &q), vec![(1, 0, 2), (2, 0, 1)]);
    assert_eq!(core_scores(&mut index, &q), vec![(1, 0, 2), (2, 0, 1)]);
}

/// The tokens hashes of a normalized store, or the removed hashes (Dynamo's types).
fn event_hashes(data: &KvCacheEventData) -> (&'static str, Vec<u64>) {
    match data {
        KvCacheEventData::Stored(s) => {
            ("stored", s.blocks.iter().map(|b| b.tokens_hash.0).collect())
        }
        KvCacheEventData::Removed(r) => ("removed", r.block_hashes.iter().map(|h| h.0).collect()),
        _ => ("cleared", Vec::new()),
    }
}

#[test]
fn a_store_without_a_salt_takes_its_parents_salt_as_in_dynamo_1_6_1() {
    use dynamo_kv_router::protocols::WorkerWithDpRank;
    use dynamo_kv_router::zmq_wire::{decode_event_batch, ZmqEventNormalizer};
    use workload::{engine_batch, Ev};

    let bs = BLOCK_SIZE as usize;
    let tokens = |n: usize, first: u32| (0..n * bs).map(|i| first + i as u32).collect::<Vec<u32>>();
    let store =
        |hashes: &[u64], parent: Option<u64>, salt: Option<&str>, medium: Option<&'static str>| {
            Ev::Stored {
                parent,
                hashes: hashes.to_vec(),
                tokens: tokens(hashes.len(), 100 * hashes[0] as u32),
                lora: None,
                salt: salt.map(str::to_string),
                medium,
            }
        };
    let removed = |hashes: &[u64]| Ev::Removed {
        hashes: hashes.to_vec(),
        medium: None,
    };
    // (what the step shows, the event)
    let steps: Vec<(&str, Ev)> = vec![
        ("a salted chain", store(&[1, 2], None, Some("s1"), None)),
        (
            "its unsalted child inherits",
            store(&[3], Some(2), None, None),
        ),
        (
            "an empty salt is none: inherits",
            store(&[4], Some(3), Some(""), None),
        ),
        (
            "an unknown parent: unsalted",
            store(&[5], Some(99), None, None),
        ),
        (
            "a salted hash stored unsalted",
            store(&[2], None, None, None),
        ),
        (
            "a child of an ambiguous parent",
            store(&[6], Some(2), None, None),
        ),
        (
            "an own salt beats the parent's",
            store(&[7], Some(3), Some("s2"), None),
        ),
        ("a remove forgets the salt", removed(&[3])),
        ("so the child is unsalted", store(&[8], Some(3), None, None)),
        ("an ambiguous hash survives its remove", removed(&[2])),
        ("still refused", store(&[9], Some(2), None, None)),
        (
            "host-pinned follows the chain",
            store(&[10], Some(7), None, Some("CPU")),
        ),
        (
            "disk bypasses it",
            store(&[11], Some(7), None, Some("DISK")),
        ),
        ("a clear forgets the rank's salts", Ev::Cleared),
        (
            "so the child is unsalted",
            store(&[12], Some(7), None, None),
        ),
    ];

    let worker = WorkerWithDpRank {
        worker_id: 7,
        dp_rank: 0,
    };
    let mut normalizer = ZmqEventNormalizer::new(BLOCK_SIZE);
    let mut ing = ingestor(7, Wire::Dynamo14);
    let (mut inherited, mut refused) = (0, 0);
    for (i, (what, ev)) in steps.into_iter().enumerate() {
        let bytes = engine_batch(&[ev], 0, BLOCK_SIZE, i as u64);
        let batch = decode_event_batch(&bytes).expect("Dynamo decodes the batch");
        let dynamo: Vec<(&str, Vec<u64>)> = batch
            .events
            .into_iter()
            .filter_map(|raw| normalizer.normalize(raw, i as u64 + 1, worker))
            .map(|p| event_hashes(&p.event.data))
            .collect();
        let out = unpack(&ing.ingest(&bytes, 1_700_000_000_000));
        let core: Vec<(&str, Vec<u64>)> = out
            .payloads
            .iter()
            .flat_map(|p| decode_1_6(p).1)
            .map(|e| event_hashes(&e.event.data))
            .collect();
        let ambiguous = out.rejected[dynamo_kv_core::Reason::AmbiguousSalt as usize];
        // Stores compare one to one; a remove of a hash stored twice is held back by the Ingestor's
        // refcount dedup, which in Dynamo runs after this normalizer.
        if !dynamo.is_empty() && dynamo.iter().all(|(kind, _)| *kind == "removed") {
            assert!(core.is_empty() || core == dynamo, "step {i} ({what})");
            continue;
        }
        assert_eq!(core, dynamo, "step {i} ({what})");
        assert_eq!(
            ambiguous as usize,
            usize::from(dynamo.is_empty()),
            "step {i} ({what})"
        );
        refused += ambiguous;
        inherited += usize::from(what.contains("inherits") || what.contains("host-pinned"));
    }
    assert_eq!((refused, inherited), (2, 3));
}
