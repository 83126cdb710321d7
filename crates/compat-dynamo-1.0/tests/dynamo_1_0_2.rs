//! The `dynamo-1.0` wire profile against Dynamo 1.0.2's own router crate (`dynamo-kv-router =1.0.2`):
//! every payload the core's Ingestor emits is decoded with Dynamo's serde types exactly as a 1.0.2
//! router decodes it (a msgpack envelope whose payload is one msgpack RouterEvent; JetStream JSON
//! with serde_json), applied to Dynamo's `RadixTree` and to the core's `RadixIndex`, and both
//! answer the same queries.

#[path = "../../compat-dynamo-common/workload.rs"]
mod workload;

use std::collections::HashMap;

use dynamo_kv_core::hash::{compute_block_hashes_with, BlockHashOptions};
use dynamo_kv_core::wire::{
    decode_router_event_envelope, write_envelope, write_router_event_msgpack,
};
use dynamo_kv_core::{
    unpack, ApplyOutcome, EventData, Ingestor, IngestorConfig, Mode, RadixIndex, RouterEvent,
    StoredBlock,
};
use dynamo_kv_router::protocols::{
    compute_block_hash_for_seq, KvCacheEventData, KvCacheEventError, LocalBlockHash,
    RouterEvent as DynEvent,
};
use dynamo_kv_router::radix_tree::RadixTree;
use serde::Deserialize;
use workload::{Rng, Sequence, Workload, WorkloadConfig};

/// The event-plane envelope as Dynamo 1.0.2's runtime deserializes it (`EventEnvelope` in
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

fn config(seed: u64, batches: usize) -> WorkloadConfig {
    WorkloadConfig {
        seed,
        batches,
        block_size: BLOCK_SIZE,
        workers: vec![
            (1, vec![0]),
            (7_000_000_000_123, vec![0, 1]),
            (u64::MAX - 5, vec![0, 1, 2]),
        ],
        loras: vec![
            None,
            None,
            None,
            Some("adapter-a".into()),
            Some("lörä-日本".into()),
        ],
        // Dynamo 1.0 has no cache salt: a salted request hashes like an unsalted one there.
        salts: vec![None],
        // The dynamo-1.0 profile filters offload tiers (a 1.0.2 router would index them as GPU).
        lower_tiers: true,
        duplicate_stores: true,
    }
}

fn config_for(worker_id: u64) -> IngestorConfig {
    IngestorConfig::new(BLOCK_SIZE, worker_id)
}

fn ingestor(worker_id: u64) -> Ingestor {
    Ingestor::new(config_for(worker_id)).unwrap()
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

/// Both sides' block hashes for a query; they must be equal.
fn hashes(seq: &Sequence) -> Vec<u64> {
    let core = compute_block_hashes_with(
        &seq.tokens,
        BLOCK_SIZE as usize,
        &BlockHashOptions {
            lora_name: seq.lora.as_deref(),
            ..Default::default()
        },
    );
    let dynamo: Vec<u64> =
        compute_block_hash_for_seq(&seq.tokens, BLOCK_SIZE, None, seq.lora.as_deref())
            .into_iter()
            .map(|h| h.0)
            .collect();
    assert_eq!(core, dynamo, "block hashes differ for {seq:?}");
    core
}

/// `(worker_id, dp_rank, score, tree_size)` with a non-zero score, sorted.
type Scores = Vec<(u64, u32, u32, u64)>;

fn dynamo_scores(tree: &RadixTree, q: &[u64]) -> Scores {
    let m = tree.find_matches(q.iter().map(|&h| LocalBlockHash(h)).collect(), false);
    let mut v: Scores = m
        .scores
        .iter()
        .filter(|(_, &s)| s > 0)
        .map(|(w, &s)| (w.worker_id, w.dp_rank, s, m.tree_sizes[w] as u64))
        .collect();
    v.sort_unstable();
    v
}

fn core_scores(index: &mut RadixIndex, q: &[u64]) -> Scores {
    index
        .find_matches(q, false)
        .into_iter()
        .filter(|m| m.score > 0)
        .map(|m| (m.worker_id, m.dp_rank, m.score, m.tree_size))
        .collect()
}

/// Queries: prefixes of stored requests (some with a diverging tail), random tokens, and stored
/// requests under another LoRA adapter.
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
        out.push(q);
    }
    out
}

#[test]
fn ten_thousand_batches_decode_apply_and_match_as_in_dynamo_1_0_2() {
    let w = Workload::generate(config(0x00d1_0102, 10_000));
    assert!(w.batches.len() > 9_000, "{} batches", w.batches.len());
    let mut ingestors: Vec<Ingestor> = w.cfg.workers.iter().map(|(id, _)| ingestor(*id)).collect();
    // The same batches through JetStream-mode Ingestors: RouterEvent JSON, as 1.0.2 reads it with serde_json.
    let mut jetstream: Vec<Ingestor> = w
        .cfg
        .workers
        .iter()
        .map(|(id, _)| {
            let mut cfg = config_for(*id);
            cfg.mode = Mode::JetStream;
            Ingestor::new(cfg).unwrap()
        })
        .collect();
    let mut sequence: Vec<u64> = vec![0; ingestors.len()];
    let mut tree = RadixTree::new();
    let mut index = RadixIndex::new();
    let mut rng = Rng::new(42);
    let mut payloads = 0usize;
    let mut stored_blocks = 0usize;
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    let (mut compared, mut nonzero) = (0usize, 0usize);

    for (i, batch) in w.batches.iter().enumerate() {
        let worker_id = w.cfg.workers[batch.worker].0;
        let out =
            unpack(&ingestors[batch.worker].ingest(&batch.bytes, 1_700_000_000_000 + i as u64));
        let json =
            unpack(&jetstream[batch.worker].ingest(&batch.bytes, 1_700_000_000_000 + i as u64));
        assert_eq!(json.payloads.len(), out.payloads.len());
        // the workload is all valid engine input; only the offload tiers are filtered
        for (reason, &n) in out.rejected.iter().enumerate() {
            if reason != dynamo_kv_core::Reason::FilteredTier as usize {
                assert_eq!(n, 0, "batch {i}: rejected reason {reason}");
            }
        }
        for (p, j) in out.payloads.iter().zip(&json.payloads) {
            payloads += 1;
            let env: EventEnvelope =
                rmp_serde::from_slice(p).expect("Dynamo 1.0.2 decodes the envelope");
            assert_eq!(env.topic, "kv-events");
            assert_eq!(env.publisher_id, worker_id);
            assert_eq!(env.sequence, sequence[batch.worker], "envelope sequence");
            assert_eq!(env.published_at, 1_700_000_000_000 + i as u64);
            sequence[batch.worker] += 1;
            let ev: DynEvent =
                rmp_serde::from_slice(&env.payload).expect("Dynamo 1.0.2 decodes the RouterEvent");
            let core_ev =
                decode_router_event_envelope(p).expect("the core decodes its own payload");
            assert_eq!(from_dynamo(&ev), core_ev, "the two decoders disagree");
            let from_json: DynEvent =
                serde_json::from_slice(j).expect("Dynamo 1.0.2 decodes the JetStream JSON");
            assert_eq!(
                from_json, ev,
                "JetStream JSON and event-plane msgpack carry the same event"
            );
            assert_eq!(ev.worker_id, worker_id);
            assert_eq!(ev.event.dp_rank, batch.dp_rank);
            if let KvCacheEventData::Stored(s) = &ev.event.data {
                for b in &s.blocks {
                    let info = &w.blocks[&b.block_hash.0];
                    let expect = compute_block_hash_for_seq(
                        &info.tokens,
                        BLOCK_SIZE,
                        None,
                        info.lora.as_deref(),
                    );
                    assert_eq!(
                        vec![b.tokens_hash],
                        expect,
                        "tokens_hash of block {}",
                        b.block_hash.0
                    );
                    stored_blocks += 1;
                }
            }
            let dyn_out = tree.apply_event(ev);
            let core_out = index.apply_event(&core_ev);
            assert!(
                same_outcome(&dyn_out, core_out),
                "batch {i}: Dynamo {dyn_out:?}, core {core_out:?}"
            );
            *outcomes.entry(format!("{core_out:?}")).or_default() += 1;
        }
        if (i + 1) % 1000 == 0 {
            for q in queries(&mut rng, &w) {
                let h = hashes(&q);
                let d = dynamo_scores(&tree, &h);
                let c = core_scores(&mut index, &h);
                assert_eq!(d, c, "after batch {i}: scores differ for {q:?}");
                compared += 1;
                nonzero += !c.is_empty() as usize;
            }
        }
    }
    assert_eq!(tree.current_size(), index.size() as usize, "total blocks");
    // a worker leaving, on both sides (1.0.2 has no per-rank removal)
    let (gone, _) = w.cfg.workers[1];
    tree.remove_worker(gone);
    index.remove_worker(gone);
    for q in queries(&mut rng, &w) {
        let h = hashes(&q);
        let c = core_scores(&mut index, &h);
        assert!(c.iter().all(|m| m.0 != gone));
        assert_eq!(
            dynamo_scores(&tree, &h),
            c,
            "after remove_worker: scores differ for {q:?}"
        );
    }
    let filtered: u64 = ingestors.iter().map(|g| g.counters()[14]).sum();
    assert_eq!(dynamo_kv_core::COUNTER_NAMES[14], "rejected_filtered_tier");
    let lower =
        w.stats.get("lower_stored").unwrap_or(&0) + w.stats.get("lower_removed").unwrap_or(&0);
    assert_eq!(
        filtered as usize, lower,
        "every offload-tier event is filtered, and nothing else"
    );
    assert_eq!(tree.current_size(), index.size() as usize, "total blocks");
    eprintln!(
        "dynamo 1.0.2: {} batches, {payloads} payloads, {stored_blocks} stored blocks, outcomes {outcomes:?}, \
         {compared} queries ({nonzero} with a match), workload {:?}",
        w.batches.len(),
        w.stats
    );
    assert!(payloads > 15_000 && stored_blocks > 20_000);
    assert!(
        nonzero * 2 > compared,
        "most queries must hit something to mean anything"
    );
    assert!(w.stats["cleared"] > 10 && w.stats["removed_blocks"] > 5_000);
}

// --- Where a Dynamo 1.0.2 router and the core's index answer differently, and why ---------------

/// Encodes a core event as the dynamo-1.0 profile does, decodes it with Dynamo 1.0.2's types and
/// applies it to both sides.
fn apply_both(tree: &mut RadixTree, index: &mut RadixIndex, ev: RouterEvent) {
    let mut msg = Vec::new();
    write_router_event_msgpack(&mut msg, &ev);
    let mut env = Vec::new();
    write_envelope(&mut env, ev.worker_id, 0, 0, "kv-events", &msg);
    let decoded: EventEnvelope = rmp_serde::from_slice(&env).unwrap();
    let dyn_ev: DynEvent = rmp_serde::from_slice(&decoded.payload).unwrap();
    assert_eq!(from_dynamo(&dyn_ev), ev);
    let d = tree.apply_event(dyn_ev);
    let c = index.apply_event(&ev);
    assert!(same_outcome(&d, c), "Dynamo {d:?}, core {c:?}");
}

fn stored(
    worker_id: u64,
    event_id: u64,
    parent: Option<u64>,
    blocks: &[(u64, u64)],
) -> RouterEvent {
    RouterEvent {
        worker_id,
        event_id,
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

fn removed(worker_id: u64, event_id: u64, hashes: &[u64]) -> RouterEvent {
    RouterEvent {
        worker_id,
        event_id,
        dp_rank: 0,
        data: EventData::Removed {
            block_hashes: hashes.to_vec(),
        },
    }
}

/// Class 1: a removed inner block. Engines do not evict strictly leaf-first, and a remove does not
/// cascade to descendants in either index. Dynamo 1.0.2's walk keeps its active set when a node has
/// as many workers as are active, so a worker can be credited for a node it left while a stale
/// holder of that node is still there; the core drops every worker not on a node (later Dynamo
/// releases do the same).
#[test]
fn an_inner_remove_lets_dynamo_1_0_2_credit_a_stale_node() {
    let (mut tree, mut index) = (RadixTree::new(), RadixIndex::new());
    let chain = [(101, 11), (102, 12), (103, 13)];
    apply_both(&mut tree, &mut index, stored(1, 0, None, &chain));
    apply_both(&mut tree, &mut index, stored(2, 0, None, &chain));
    apply_both(&mut tree, &mut index, removed(1, 1, &[102])); // worker 1 keeps 103, now stale
    apply_both(&mut tree, &mut index, removed(2, 1, &[103]));
    let q = [11, 12, 13];
    assert_eq!(
        dynamo_scores(&tree, &q),
        vec![(1, 0, 1, 2), (2, 0, 3, 2)],
        "1.0.2 credits worker 2 with 103"
    );
    assert_eq!(
        core_scores(&mut index, &q),
        vec![(1, 0, 1, 2), (2, 0, 2, 2)]
    );
    // with leaf-first eviction (the workload above) both agree
    let (mut tree, mut index) = (RadixTree::new(), RadixIndex::new());
    apply_both(&mut tree, &mut index, stored(1, 0, None, &chain));
    apply_both(&mut tree, &mut index, stored(2, 0, None, &chain));
    apply_both(&mut tree, &mut index, removed(1, 1, &[103, 102]));
    apply_both(&mut tree, &mut index, removed(2, 1, &[103]));
    assert_eq!(dynamo_scores(&tree, &q), core_scores(&mut index, &q));
}

/// Class 2: one worker holding the same tokens under two block hashes (an engine whose hash covers
/// something Dynamo 1.0's tokens hash does not, such as a cache salt). Dynamo 1.0.2 keeps one
/// worker flag per node, so removing either hash takes the worker off the node; the core keeps the
/// worker on the node while it holds another of its hashes there.
#[test]
fn one_worker_with_two_hashes_for_one_block_leaves_dynamo_1_0_2_on_the_first_remove() {
    let (mut tree, mut index) = (RadixTree::new(), RadixIndex::new());
    apply_both(&mut tree, &mut index, stored(1, 0, None, &[(101, 11)]));
    apply_both(&mut tree, &mut index, stored(1, 1, None, &[(201, 11)])); // same tokens, salted engine hash
    apply_both(&mut tree, &mut index, removed(1, 2, &[101]));
    assert_eq!(
        dynamo_scores(&tree, &[11]),
        vec![],
        "1.0.2 forgot that worker 1 still holds 201"
    );
    assert_eq!(core_scores(&mut index, &[11]), vec![(1, 0, 1, 1)]);
}

/// Why the dynamo-1.0 profile never publishes `cleared` for one rank of a multi-rank publisher:
/// Dynamo 1.0.2 applies `cleared` to every dp rank of the worker. The core emits the rank's live
/// blocks as removes instead, which leaves the other ranks matched on a 1.0.2 router.
#[test]
fn an_engine_clear_on_one_rank_leaves_the_other_ranks_on_dynamo_1_0_2() {
    let mut ing = ingestor(9);
    let (mut tree, mut index) = (RadixTree::new(), RadixIndex::new());
    let seq = Sequence {
        tokens: (0..16).collect(),
        lora: None,
        salt: None,
    };
    let h = hashes(&seq);
    let engine: Vec<u64> = vec![501, 502];
    let feed = |ing_out: Vec<u8>, tree: &mut RadixTree, index: &mut RadixIndex| {
        for p in unpack(&ing_out).payloads {
            let env: EventEnvelope = rmp_serde::from_slice(&p).unwrap();
            let ev: DynEvent = rmp_serde::from_slice(&env.payload).unwrap();
            let core_ev = decode_router_event_envelope(&p).unwrap();
            assert!(same_outcome(
                &tree.apply_event(ev),
                index.apply_event(&core_ev)
            ));
        }
    };
    for rank in [0, 1] {
        let out = ing.stored(
            &seq.tokens,
            &engine,
            BLOCK_SIZE as u64,
            None,
            None,
            None,
            rank,
            0,
        );
        feed(out, &mut tree, &mut index);
    }
    let clear = ing.cleared(0, 0);
    let payloads = unpack(&clear).payloads;
    assert_eq!(payloads.len(), 1);
    let ev: DynEvent = rmp_serde::from_slice(
        &rmp_serde::from_slice::<EventEnvelope>(&payloads[0])
            .unwrap()
            .payload,
    )
    .unwrap();
    assert!(
        matches!(ev.event.data, KvCacheEventData::Removed(_)),
        "a removed event, not cleared"
    );
    feed(clear, &mut tree, &mut index);
    assert_eq!(dynamo_scores(&tree, &h), vec![(9, 1, 2, 2)]);
    assert_eq!(core_scores(&mut index, &h), vec![(9, 1, 2, 2)]);
    // what a raw `cleared` for rank 0 would have done on 1.0.2: rank 1 is gone as well
    let mut raw = stored(9, 5, None, &[(501, h[0])]);
    raw.data = EventData::Cleared;
    apply_both(&mut tree, &mut index, raw);
    assert_eq!(
        dynamo_scores(&tree, &h),
        vec![],
        "1.0.2 cleared every rank of worker 9"
    );
    assert_eq!(
        core_scores(&mut index, &h),
        vec![],
        "the core's index applies `cleared` as Dynamo does"
    );
}

// --- Why both wire profiles exist -----------------------------------------------------------------

/// A dynamo-1.4 Ingestor for worker 9 (ranks get their own publisher ids).
fn ingestor_14() -> Ingestor {
    let mut cfg = config_for(9);
    cfg.wire = dynamo_kv_core::convert::Wire::Dynamo14;
    cfg.publisher_seed = 7;
    Ingestor::new(cfg).unwrap()
}

/// The engine batch `[ts, [BlockStored], rank]` of two blocks of tokens 0..16 under `medium`.
fn store_batch(medium: &str, rank: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = dynamo_kv_core::msgpack::Writer::new(&mut out);
    w.array(3);
    w.uint(0);
    w.array(1);
    w.array(7);
    w.str("BlockStored");
    w.array(2);
    w.uint(501);
    w.uint(502);
    w.nil();
    w.array(16);
    for t in 0..16 {
        w.uint(t);
    }
    w.uint(BLOCK_SIZE as u64);
    w.nil();
    w.str(medium);
    w.uint(rank as u64);
    out
}

/// The payloads of one call, each the envelope's payload bytes (for 1.4: an array of events).
fn envelope_payloads(out: &[u8]) -> Vec<Vec<u8>> {
    unpack(out)
        .payloads
        .iter()
        .map(|p| {
            rmp_serde::from_slice::<EventEnvelope>(p)
                .unwrap()
                .payload
                .into_vec()
        })
        .collect()
}

/// A dynamo-1.4 payload (an array of RouterEvents in the envelope) is rejected by a 1.0.2 router,
/// which reads the envelope payload as one RouterEvent.
#[test]
fn dynamo_1_0_2_rejects_a_dynamo_1_4_payload() {
    let mut ing = ingestor_14();
    let payloads = envelope_payloads(&ing.ingest(&store_batch("GPU", 0), 0));
    assert_eq!(payloads.len(), 1);
    assert_eq!(payloads[0][0], 0x91, "an array of one event");
    assert!(rmp_serde::from_slice::<DynEvent>(&payloads[0]).is_err());
    // the 1.0 profile of the same batch is read
    let mut ing = ingestor(9);
    let payloads = envelope_payloads(&ing.ingest(&store_batch("GPU", 0), 0));
    let ev: DynEvent = rmp_serde::from_slice(&payloads[0]).unwrap();
    assert_eq!(ev.worker_id, 9);
}

/// Even taken out of its array, a dynamo-1.4 event misleads a 1.0.2 router: serde skips the
/// `storage_tier` and `residency_domain` it does not know, so a host_pinned (CPU offload) store
/// is indexed as GPU and a rank's `cleared` wipes every rank of the worker. The dynamo-1.0 profile
/// therefore filters offload tiers and turns a one-rank reset into removes.
#[test]
fn dynamo_1_0_2_reads_a_lone_dynamo_1_4_event_as_gpu_and_worker_wide() {
    let seq = Sequence {
        tokens: (0..16).collect(),
        lora: None,
        salt: None,
    };
    let h = hashes(&seq);
    let mut ing = ingestor_14();
    let mut tree = RadixTree::new();
    let cpu = envelope_payloads(&ing.ingest(&store_batch("CPU", 0), 0));
    let event = &cpu[0][1..]; // the one event of the array
    let core = dynamo_kv_core::wire::decode_router_events_msgpack(&cpu[0]).unwrap();
    assert_eq!(
        core[0].1.storage_tier.map(|t| t.name()),
        Some("host_pinned")
    );
    let ev: DynEvent =
        rmp_serde::from_slice(event).expect("1.0.2 skips the fields it does not know");
    tree.apply_event(ev).unwrap();
    assert_eq!(
        dynamo_scores(&tree, &h),
        vec![(9, 0, 2, 2)],
        "a CPU copy counted as a GPU hit"
    );
    // the dynamo-1.0 profile does not publish the offload event at all
    let mut ing10 = ingestor(9);
    let out = unpack(&ing10.ingest(&store_batch("CPU", 0), 0));
    assert!(out.payloads.is_empty());
    assert_eq!(
        out.rejected[dynamo_kv_core::Reason::FilteredTier as usize],
        1
    );

    // a rank's reset: GPU stores on ranks 0 and 1, then the 1.4 `cleared` of rank 0 alone
    let mut tree = RadixTree::new();
    for rank in [0, 1] {
        for p in envelope_payloads(&ing.ingest(&store_batch("GPU", rank), 0)) {
            tree.apply_event(rmp_serde::from_slice(&p[1..]).unwrap())
                .unwrap();
        }
    }
    assert_eq!(dynamo_scores(&tree, &h), vec![(9, 0, 2, 2), (9, 1, 2, 2)]);
    let clear = envelope_payloads(&ing.cleared(0, 0));
    let core = dynamo_kv_core::wire::decode_router_events_msgpack(&clear[0]).unwrap();
    assert!(matches!(core[0].0.data, EventData::Cleared) && core[0].1.rank_scoped());
    tree.apply_event(rmp_serde::from_slice(&clear[0][1..]).unwrap())
        .unwrap();
    assert_eq!(
        dynamo_scores(&tree, &h),
        vec![],
        "1.0.2 cleared rank 1 as well"
    );
}
