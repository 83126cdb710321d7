//! Scenario tests of `ingest::Ingestor` (SPEC 3 and 5): event ids per dp rank, the envelope, the reset
//! rule, splitting of large events, the rank limit, truncation warnings, the manual API, JetStream
//! payloads, configuration errors and the counters. Batches are built with `msgpack::Writer` as vLLM's
//! map-era events `[ts, [{"type": "BlockStored", ...}], dp_rank]`; outputs are read back with `unpack`,
//! an envelope decoder written here, and the wire decoders.

use std::collections::{BTreeMap, BTreeSet};

use dynamo_kv_core::convert::{decode_engine_batch, Converted, Reason, REASON_COUNT};
use dynamo_kv_core::hash::compute_block_hashes;
use dynamo_kv_core::ingest::{
    unpack, ConfigError, Ingestor, IngestorConfig, Mode, Unpacked, COUNTER_NAMES,
};
use dynamo_kv_core::msgpack::{Head, Reader, Writer};
use dynamo_kv_core::wire::{
    decode_router_event_json, decode_router_event_msgpack, write_router_event_json, BlockExtraInfo,
    EventData, MmObject, RouterEvent,
};

/// A worker id above 2^63: it must survive every encoding exactly.
const WORKER: u64 = 0x8000_0000_0000_0001;
const NOW: u64 = 1_764_000_000_000;

// ================================================================================================
// building engine batches

/// A field value for the extra keys of an event.
#[derive(Clone, Copy)]
enum V<'a> {
    Str(&'a str),
    Uint(u64),
}

fn put(w: &mut Writer, v: V) {
    match v {
        V::Str(s) => w.str(s),
        V::Uint(u) => w.uint(u),
    }
}

/// A vLLM map-era BlockStored, plus `extra` fields (which replace nothing: the last repeated key wins).
fn store_ext(
    hashes: &[u64],
    parent: Option<u64>,
    tokens: &[u32],
    block_size: u64,
    extra: &[(&str, V)],
) -> Vec<u8> {
    let mut b = Vec::new();
    let mut w = Writer::new(&mut b);
    w.map(8 + extra.len());
    w.str("type");
    w.str("BlockStored");
    w.str("block_hashes");
    w.array(hashes.len());
    for &h in hashes {
        w.uint(h);
    }
    w.str("parent_block_hash");
    w.opt_uint(parent);
    w.str("token_ids");
    w.array(tokens.len());
    for &t in tokens {
        w.uint(t as u64);
    }
    w.str("block_size");
    w.uint(block_size);
    w.str("lora_id");
    w.nil();
    w.str("medium");
    w.str("GPU");
    w.str("lora_name");
    w.nil();
    for &(k, v) in extra {
        w.str(k);
        put(&mut w, v);
    }
    b
}

fn store(hashes: &[u64], parent: Option<u64>, tokens: &[u32], block_size: u64) -> Vec<u8> {
    store_ext(hashes, parent, tokens, block_size, &[])
}

fn remove_ext(hashes: &[u64], extra: &[(&str, V)]) -> Vec<u8> {
    let mut b = Vec::new();
    let mut w = Writer::new(&mut b);
    w.map(3 + extra.len());
    w.str("type");
    w.str("BlockRemoved");
    w.str("block_hashes");
    w.array(hashes.len());
    for &h in hashes {
        w.uint(h);
    }
    w.str("medium");
    w.str("GPU");
    for &(k, v) in extra {
        w.str(k);
        put(&mut w, v);
    }
    b
}

fn remove(hashes: &[u64]) -> Vec<u8> {
    remove_ext(hashes, &[])
}

fn clear() -> Vec<u8> {
    let mut b = Vec::new();
    let mut w = Writer::new(&mut b);
    w.map(2);
    w.str("type");
    w.str("AllBlocksCleared");
    w.str("medium");
    w.nil();
    b
}

/// An event of another type, and one that is no event at all.
fn unknown_event() -> Vec<u8> {
    let mut b = Vec::new();
    let mut w = Writer::new(&mut b);
    w.map(1);
    w.str("type");
    w.str("BlockEvicted");
    b
}

fn invalid_event() -> Vec<u8> {
    vec![0xc0]
}

/// `[ts, events, dp_rank]`
fn batch(rank: u32, events: &[Vec<u8>]) -> Vec<u8> {
    let mut b = Vec::new();
    let mut w = Writer::new(&mut b);
    w.array(3);
    w.buf.push(0xcb);
    w.buf
        .extend_from_slice(&1_764_000_000.25f64.to_bits().to_be_bytes());
    w.array(events.len());
    for e in events {
        w.buf.extend_from_slice(e);
    }
    w.uint(rank as u64);
    b
}

/// Token ids for `n` tokens (distinct enough to give distinct block hashes).
fn toks(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| i.wrapping_mul(2_654_435_761).wrapping_add(salt) % 150_000)
        .collect()
}

/// Distinct pseudo-random u64 hashes, many above 2^63.
fn hashes(n: usize, seed: u64) -> Vec<u64> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
        .collect()
}

fn cfg(bs: u32) -> IngestorConfig {
    IngestorConfig {
        kv_block_size: bs,
        worker_id: WORKER,
        mode: Mode::EventPlane,
        max_dp_ranks: 64,
        dp_ranks: None,
        local_indexer: None,
        ..IngestorConfig::new(bs, WORKER)
    }
}

fn ingestor(c: IngestorConfig) -> Ingestor {
    Ingestor::new(c).expect("valid config")
}

// ================================================================================================
// reading outputs back

#[derive(Debug, Clone, PartialEq)]
struct Envelope {
    publisher_id: u64,
    sequence: u64,
    published_at: u64,
    topic: String,
    payload: Vec<u8>,
}

/// The event-plane envelope: a msgpack map with exactly these keys in this order (SPEC 5).
fn envelope(b: &[u8]) -> Envelope {
    let mut r = Reader::new(b);
    assert_eq!(r.head(1), Ok(Head::Map(5)), "envelope header");
    let mut e = Envelope {
        publisher_id: 0,
        sequence: 0,
        published_at: 0,
        topic: String::new(),
        payload: Vec::new(),
    };
    for key in [
        "publisher_id",
        "sequence",
        "published_at",
        "topic",
        "payload",
    ] {
        assert_eq!(
            r.head(2),
            Ok(Head::Str(key.as_bytes())),
            "envelope key order"
        );
        match (key, r.head(2).expect("envelope value")) {
            ("publisher_id", Head::Uint(v)) => e.publisher_id = v,
            ("sequence", Head::Uint(v)) => e.sequence = v,
            ("published_at", Head::Uint(v)) => e.published_at = v,
            ("topic", Head::Str(s)) => e.topic = String::from_utf8(s.to_vec()).unwrap(),
            ("payload", Head::Bin(p)) => e.payload = p.to_vec(),
            (k, h) => panic!("envelope {k}: unexpected {h:?}"),
        }
    }
    assert!(r.at_end(), "bytes after the envelope");
    e
}

/// One call's output: the unpacked header, and per payload its envelope (event plane) and event.
struct Out {
    u: Unpacked,
    envs: Vec<Envelope>,
    evs: Vec<RouterEvent>,
}

impl Out {
    fn ids(&self) -> Vec<u64> {
        self.evs.iter().map(|e| e.event_id).collect()
    }
    fn data(&self) -> Vec<EventData> {
        self.evs.iter().map(|e| e.data.clone()).collect()
    }
    fn rejected(&self, r: Reason) -> u32 {
        self.u.rejected[r as usize]
    }
    fn rejected_total(&self) -> u32 {
        self.u.rejected.iter().sum()
    }
}

fn read(mode: Mode, packed: &[u8]) -> Out {
    let u = unpack(packed);
    let mut envs = Vec::new();
    let mut evs = Vec::new();
    for p in &u.payloads {
        let ev = match mode {
            Mode::EventPlane => {
                let e = envelope(p);
                assert_eq!(e.publisher_id, WORKER);
                assert_eq!(e.topic, "kv-events");
                let ev = decode_router_event_msgpack(&e.payload).expect("msgpack RouterEvent");
                envs.push(e);
                ev
            }
            Mode::JetStream => {
                assert_eq!(p.first(), Some(&b'{'), "JetStream payloads are JSON");
                let ev = decode_router_event_json(p).expect("RouterEvent JSON");
                // byte-exact: what the JSON writer makes of the decoded event
                let mut again = Vec::new();
                write_router_event_json(&mut again, &ev);
                assert_eq!(&again, p);
                ev
            }
        };
        assert_eq!(ev.worker_id, WORKER);
        assert_eq!(
            Some(ev.dp_rank),
            u.dp_rank,
            "all payloads of one call share the batch's rank"
        );
        evs.push(ev);
    }
    // payload i has id first_event_id + i
    match u.first_event_id {
        Some(first) => assert_eq!(
            evs.iter().map(|e| e.event_id).collect::<Vec<_>>(),
            (first..first + evs.len() as u64).collect::<Vec<_>>()
        ),
        None => assert!(evs.is_empty(), "payloads without a first event id"),
    }
    Out { u, envs, evs }
}

fn ingest(ing: &mut Ingestor, b: &[u8]) -> Out {
    read(Mode::EventPlane, &ing.ingest(b, NOW))
}

fn counter(ing: &Ingestor, name: &str) -> u64 {
    let i = COUNTER_NAMES
        .iter()
        .position(|&n| n == name)
        .unwrap_or_else(|| panic!("no counter {name}"));
    ing.counters()[i]
}

fn counters(ing: &Ingestor) -> BTreeMap<&'static str, u64> {
    COUNTER_NAMES
        .iter()
        .zip(ing.counters())
        .map(|(&n, &v)| (n, v))
        .filter(|&(_, v)| v != 0)
        .collect()
}

fn stored_hashes(d: &EventData) -> Vec<u64> {
    match d {
        EventData::Stored { blocks, .. } => blocks.iter().map(|b| b.block_hash).collect(),
        d => panic!("not a store: {d:?}"),
    }
}

fn removed(d: &EventData) -> &[u64] {
    match d {
        EventData::Removed { block_hashes } => block_hashes,
        d => panic!("not a remove: {d:?}"),
    }
}

fn sorted(v: &[u64]) -> Vec<u64> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v
}

// ================================================================================================
// event ids

#[test]
fn event_ids_per_rank_start_at_zero_and_are_consecutive() {
    let mut ing = ingestor(cfg(4));
    assert_eq!(ing.next_event_id(0), 0);
    assert_eq!(ing.next_event_id(7), 0, "a rank never seen starts at 0");

    let o = ingest(
        &mut ing,
        &batch(
            0,
            &[
                store(&[1], None, &toks(4, 1), 4),
                store(&[2], Some(1), &toks(4, 2), 4),
            ],
        ),
    );
    assert_eq!(o.u.dp_rank, Some(0));
    assert_eq!(o.u.first_event_id, Some(0));
    assert_eq!(o.ids(), [0, 1]);

    let o = ingest(&mut ing, &batch(7, &[store(&[10], None, &toks(4, 3), 4)]));
    assert_eq!(
        (o.u.dp_rank, o.ids()),
        (Some(7), vec![0]),
        "each rank counts on its own"
    );

    let o = ingest(
        &mut ing,
        &batch(0, &[remove(&[2]), store(&[3], Some(1), &toks(4, 4), 4)]),
    );
    assert_eq!(o.ids(), [2, 3]);
    let o = ingest(&mut ing, &batch(7, &[remove(&[10])]));
    assert_eq!(o.ids(), [1]);

    // next_event_id is a peek: asking does not consume
    for _ in 0..5 {
        assert_eq!(ing.next_event_id(0), 4);
        assert_eq!(ing.next_event_id(7), 2);
        assert_eq!(ing.next_event_id(3), 0);
    }
    let o = ingest(&mut ing, &batch(0, &[remove(&[3])]));
    assert_eq!(o.ids(), [4]);
    assert_eq!(ing.next_event_id(0), 5);

    // an empty batch (a heartbeat) emits nothing and has no first id
    let o = ingest(&mut ing, &batch(0, &[]));
    assert_eq!(
        (o.u.first_event_id, o.u.payloads.len(), o.u.dp_rank),
        (None, 0, Some(0))
    );
    assert_eq!(ing.next_event_id(0), 5);
}

#[test]
fn rejections_consume_no_id() {
    let mut ing = ingestor(cfg(4));
    let t = toks(8, 9);
    let events = vec![
        store(&[100], None, &t[..4], 4), // id 0
        invalid_event(),                 // invalid
        unknown_event(),                 // unknown_type
        store_ext(&[101], None, &t[..4], 4, &[("medium", V::Str("CPU"))]), // filtered_tier
        store_ext(&[102], None, &t[..4], 4, &[("locality", V::Str("REMOTE"))]), // filtered_tier
        store_ext(
            &[103],
            None,
            &t[..4],
            4,
            &[("kv_cache_spec_kind", V::Str("sliding_window"))],
        ), // filtered_group
        store(&[], None, &t[..4], 4),    // empty
        remove(&[]),                     // empty
        store(&[104, 104], None, &t, 4), // self_reference (repeat)
        store(&[105], Some(105), &t[..4], 4), // self_reference (parent)
        store(&[106], None, &t[..4], 8), // block_size (mismatch)
        store(&[107], None, &t[..3], 4), // block_size (no full block)
        store(&[108], Some(100), &t[4..], 4), // id 1
        remove(&[100]),                  // id 2
    ];
    let o = ingest(&mut ing, &batch(0, &events));
    assert_eq!(o.ids(), [0, 1, 2]);
    assert_eq!(stored_hashes(&o.data()[0]), [100]);
    assert_eq!(stored_hashes(&o.data()[1]), [108]);
    let want: [(Reason, u32); 7] = [
        (Reason::Invalid, 1),
        (Reason::UnknownType, 1),
        (Reason::FilteredTier, 2),
        (Reason::FilteredGroup, 1),
        (Reason::Empty, 2),
        (Reason::SelfReference, 2),
        (Reason::BlockSize, 2),
    ];
    for (r, n) in want {
        assert_eq!(o.rejected(r), n, "{}", r.name());
        assert_eq!(counter(&ing, &format!("rejected_{}", r.name())), n as u64);
    }
    assert_eq!(o.rejected(Reason::Malformed), 0);
    assert_eq!(counter(&ing, "events_in"), events.len() as u64);

    // a malformed batch: no rank, one `malformed`, nothing emitted, no id consumed
    let mut bad = batch(0, &[store(&[109], None, &t[..4], 4)]);
    bad.pop(); // the rank is missing: truncated
    let o = ingest(&mut ing, &bad);
    assert_eq!(o.u.dp_rank, None);
    assert_eq!((o.rejected(Reason::Malformed), o.rejected_total()), (1, 1));
    assert_eq!((o.u.first_event_id, o.u.payloads.len()), (None, 0));
    assert_eq!(counter(&ing, "rejected_malformed"), 1);
    for trailing in [&[0xc0u8][..], &[0x00], &[0xc1]] {
        let mut b = batch(0, &[store(&[110], None, &t[..4], 4)]);
        b.extend_from_slice(trailing);
        assert_eq!(
            ingest(&mut ing, &b).u.dp_rank,
            None,
            "bytes after the batch"
        );
    }

    // and the next emitted event continues without a gap
    let o = ingest(&mut ing, &batch(0, &[remove(&[108])]));
    assert_eq!(o.ids(), [3]);
    assert_eq!(counter(&ing, "batches"), 6);
}

#[test]
fn envelope_sequence_counts_from_zero_across_ranks_and_carries_the_clock() {
    let mut ing = ingestor(cfg(4));
    let t = toks(4, 1);
    let mut seqs = Vec::new();
    let calls: [(u32, u64, Vec<u8>); 4] = [
        (
            0,
            1_000,
            batch(0, &[store(&[1], None, &t, 4), store(&[2], Some(1), &t, 4)]),
        ),
        (3, 2_000, batch(3, &[store(&[1], None, &t, 4)])),
        (0, 3_000, batch(0, &[invalid_event()])),
        (3, 4_000, batch(3, &[remove(&[1])])),
    ];
    for (rank, now, b) in &calls {
        let o = read(Mode::EventPlane, &ing.ingest(b, *now));
        assert_eq!(o.u.dp_rank, Some(*rank));
        for e in &o.envs {
            assert_eq!(e.published_at, *now, "published_at is the now_ms given");
            seqs.push(e.sequence);
        }
    }
    // the manual API shares the sequence
    let o = read(
        Mode::EventPlane,
        &ing.stored(&t, &[9], 4, None, None, None, 0, 5_000),
    );
    assert_eq!(o.envs[0].published_at, 5_000);
    seqs.push(o.envs[0].sequence);
    let o = read(Mode::EventPlane, &ing.removed(&[9], 0, 6_000));
    seqs.push(o.envs[0].sequence);
    let o = read(Mode::EventPlane, &ing.cleared(3, 7_000));
    assert!(
        o.envs.is_empty(),
        "rank 3 has no live blocks left and two ranks are seen: nothing to emit"
    );
    assert_eq!(seqs, (0..6).collect::<Vec<u64>>());
    // while event ids are per rank
    assert_eq!((ing.next_event_id(0), ing.next_event_id(3)), (4, 2));
}

// ================================================================================================
// the reset rule

#[test]
fn reset_of_the_only_rank_seen_is_one_cleared() {
    let mut ing = ingestor(cfg(4));
    let t = toks(8, 5);
    ingest(&mut ing, &batch(2, &[store(&[11, 12], None, &t, 4)]));
    let o = ingest(&mut ing, &batch(2, &[clear()]));
    assert_eq!(o.data(), [EventData::Cleared]);
    assert_eq!(o.ids(), [1]);
    // cleared again, with no live blocks: still the `cleared` form, with an id
    let o = ingest(&mut ing, &batch(2, &[clear()]));
    assert_eq!((o.data(), o.ids()), (vec![EventData::Cleared], vec![2]));
    // the manual API follows the same rule
    let o = read(Mode::EventPlane, &ing.cleared(2, NOW));
    assert_eq!((o.data(), o.ids()), (vec![EventData::Cleared], vec![3]));
    assert_eq!(counter(&ing, "resets"), 3);
    assert_eq!(counter(&ing, "emitted_cleared"), 3);

    // a rank whose batches were rejected (dp_rank) or malformed is not seen
    let mut ing = ingestor(IngestorConfig {
        max_dp_ranks: 1,
        ..cfg(4)
    });
    ingest(&mut ing, &batch(0, &[store(&[1], None, &t[..4], 4)]));
    assert_eq!(
        ingest(&mut ing, &batch(1, &[store(&[2], None, &t[..4], 4)])).rejected(Reason::DpRank),
        1
    );
    assert_eq!(ingest(&mut ing, &[0x93, 0x00]).u.dp_rank, None);
    assert_eq!(
        ingest(&mut ing, &batch(0, &[clear()])).data(),
        [EventData::Cleared]
    );
}

#[test]
fn reset_with_two_ranks_seen_removes_the_ranks_live_blocks_in_ascending_order() {
    let mut ing = ingestor(cfg(2));
    let h0 = vec![u64::MAX, 5, 1 << 63, 77, 3, (1 << 63) - 1, 0, 1 << 40];
    let h1 = vec![5, 6, 7]; // 5 is on both ranks
    let o = ingest(&mut ing, &batch(0, &[store(&h0, None, &toks(16, 1), 2)]));
    assert_eq!(o.ids(), [0]);
    ingest(&mut ing, &batch(1, &[store(&h1, None, &toks(6, 2), 2)]));
    // a block removed before the reset is not listed again
    ingest(&mut ing, &batch(0, &[remove(&[77])]));

    let o = ingest(&mut ing, &batch(0, &[clear()]));
    let want: Vec<u64> = sorted(&h0).into_iter().filter(|&h| h != 77).collect();
    assert_eq!(
        o.data(),
        [EventData::Removed {
            block_hashes: want.clone()
        }],
        "ascending u64, no `cleared`"
    );
    assert_eq!(o.ids(), [2]);
    assert_eq!(counter(&ing, "emitted_cleared"), 0);
    assert_eq!(counter(&ing, "resets"), 1);

    // nothing live on rank 0 any more: a second reset emits nothing and consumes no id
    let o = ingest(&mut ing, &batch(0, &[clear()]));
    assert_eq!(
        (o.u.payloads.len(), o.u.first_event_id, o.rejected_total()),
        (0, None, 0)
    );
    assert_eq!(ing.next_event_id(0), 3);
    assert_eq!(counter(&ing, "resets"), 2);
    let o = read(Mode::EventPlane, &ing.cleared(0, NOW));
    assert!(o.evs.is_empty());

    // rank 1 was untouched by rank 0's resets, including the hash both ranks hold
    let o = ingest(&mut ing, &batch(1, &[clear()]));
    assert_eq!(
        o.data(),
        [EventData::Removed {
            block_hashes: vec![5, 6, 7]
        }]
    );
    assert_eq!(o.ids(), [1]);

    // a batch that stores, resets and stores again keeps that order
    let o = ingest(
        &mut ing,
        &batch(
            1,
            &[
                store(&[9, 8], None, &toks(4, 3), 2),
                clear(),
                store(&[20], None, &toks(2, 4), 2),
            ],
        ),
    );
    assert_eq!(o.ids(), [2, 3, 4]);
    assert_eq!(stored_hashes(&o.data()[0]), [9, 8]);
    assert_eq!(removed(&o.data()[1]), [8, 9]);
    assert_eq!(stored_hashes(&o.data()[2]), [20]);
}

#[test]
fn reset_removals_are_chunked_at_4096() {
    let mut ing = ingestor(cfg(1));
    let h = hashes(5000, 42);
    let o = ingest(&mut ing, &batch(0, &[store(&h, None, &toks(5000, 3), 1)]));
    assert_eq!(o.evs.len(), 5, "5000 blocks are stored as 1024 x 4 + 904");
    ingest(&mut ing, &batch(1, &[store(&[1, 2], None, &toks(2, 1), 1)]));
    let o = ingest(&mut ing, &batch(0, &[clear()]));
    assert_eq!(o.ids(), [5, 6]);
    let all = sorted(&h);
    assert_eq!(removed(&o.data()[0]), &all[..4096]);
    assert_eq!(removed(&o.data()[1]), &all[4096..]);
    assert_eq!(counter(&ing, "blocks_removed"), 5000);
    assert_eq!(counter(&ing, "emitted_removed"), 2);
}

#[test]
fn reset_rule_counts_configured_ranks() {
    let t = toks(4, 1);
    // one configured rank: `cleared`
    let mut ing = ingestor(IngestorConfig {
        dp_ranks: Some(vec![0]),
        ..cfg(4)
    });
    ingest(&mut ing, &batch(0, &[store(&[1], None, &t, 4)]));
    assert_eq!(
        ingest(&mut ing, &batch(0, &[clear()])).data(),
        [EventData::Cleared]
    );

    // two configured ranks: the `removed` form, though rank 1 never sent anything
    let mut ing = ingestor(IngestorConfig {
        dp_ranks: Some(vec![0, 1]),
        ..cfg(4)
    });
    ingest(
        &mut ing,
        &batch(0, &[store(&[3], None, &t, 4), store(&[1], Some(3), &t, 4)]),
    );
    let o = ingest(&mut ing, &batch(0, &[clear()]));
    assert_eq!(
        o.data(),
        [EventData::Removed {
            block_hashes: vec![1, 3]
        }]
    );
    assert_eq!(o.ids(), [2]);
    // rank 1 resets with no live blocks: nothing, no id
    let o = read(Mode::EventPlane, &ing.cleared(1, NOW));
    assert!(o.evs.is_empty());
    assert_eq!(ing.next_event_id(1), 0);
    assert_eq!(counter(&ing, "emitted_cleared"), 0);
}

// ================================================================================================
// large events

#[test]
fn a_store_of_2500_blocks_is_three_chained_events() {
    for mode in [Mode::EventPlane, Mode::JetStream] {
        let mut ing = ingestor(IngestorConfig { mode, ..cfg(2) });
        let h = hashes(2500, 7);
        let t = toks(5000, 11);
        let parent = 0xdead_beef_0000_0001;
        let o = read(
            mode,
            &ing.ingest(&batch(0, &[store(&h, Some(parent), &t, 2)]), NOW),
        );
        assert_eq!(o.ids(), [0, 1, 2]);
        let want_hashes = compute_block_hashes(&t, 2, None, None);
        let mut seen = 0;
        let mut want_parent = Some(parent);
        for (d, size) in o.data().iter().zip([1024, 1024, 452]) {
            let EventData::Stored {
                parent_hash,
                blocks,
            } = d
            else {
                panic!("{d:?}")
            };
            assert_eq!(blocks.len(), size);
            assert_eq!(
                *parent_hash, want_parent,
                "each chunk chains to the last block of the previous one"
            );
            for (i, b) in blocks.iter().enumerate() {
                assert_eq!(b.block_hash, h[seen + i]);
                assert_eq!(b.tokens_hash, want_hashes[seen + i]);
                assert_eq!(b.mm_extra_info, None);
            }
            seen += size;
            want_parent = blocks.last().map(|b| b.block_hash);
        }
        assert_eq!(seen, 2500);
        for p in &o.u.payloads {
            assert!(
                p.len() < 1024 * 1024,
                "fits a default NATS max payload: {} bytes",
                p.len()
            );
        }
        assert_eq!(counter(&ing, "emitted_stored"), 3);
        assert_eq!(counter(&ing, "blocks_stored"), 2500);
        assert_eq!(ing.next_event_id(0), 3);
    }

    // the boundaries
    for (n, events) in [(1024usize, 1usize), (1025, 2), (2048, 2), (2049, 3)] {
        let mut ing = ingestor(cfg(1));
        let o = ingest(
            &mut ing,
            &batch(0, &[store(&hashes(n, n as u64), None, &toks(n, 1), 1)]),
        );
        assert_eq!(o.evs.len(), events, "{n} blocks");
    }
}

#[test]
fn a_remove_of_10000_hashes_is_three_events() {
    let h = hashes(10_000, 3);
    let mut ing = ingestor(cfg(4));
    ingest(&mut ing, &batch(0, &[store(&[1], None, &toks(4, 1), 4)]));
    let o = ingest(&mut ing, &batch(0, &[remove(&h)]));
    assert_eq!(o.ids(), [1, 2, 3]);
    let sizes: Vec<usize> = o.data().iter().map(|d| removed(d).len()).collect();
    assert_eq!(sizes, [4096, 4096, 1808]);
    let all: Vec<u64> = o.data().iter().flat_map(|d| removed(d).to_vec()).collect();
    assert_eq!(all, h, "in the order given");
    assert_eq!(counter(&ing, "emitted_removed"), 3);
    assert_eq!(counter(&ing, "blocks_removed"), 10_000);

    // the manual API splits the same way
    let o = read(Mode::EventPlane, &ing.removed(&h, 0, NOW));
    assert_eq!(o.ids(), [4, 5, 6]);
    assert_eq!(
        o.data()
            .iter()
            .map(|d| removed(d).len())
            .collect::<Vec<_>>(),
        [4096, 4096, 1808]
    );

    for (n, events) in [(4096usize, 1usize), (4097, 2)] {
        let o = ingest(&mut ing, &batch(0, &[remove(&hashes(n, 9))]));
        assert_eq!(o.evs.len(), events, "{n} hashes");
    }
}

// ================================================================================================
// ranks

#[test]
fn a_rank_past_max_dp_ranks_is_rejected_whole() {
    let mut ing = ingestor(IngestorConfig {
        max_dp_ranks: 2,
        ..cfg(4)
    });
    let t = toks(4, 1);
    assert_eq!(
        ingest(&mut ing, &batch(0, &[store(&[1], None, &t, 4)])).ids(),
        [0]
    );
    assert_eq!(
        ingest(&mut ing, &[0xc1]).u.dp_rank,
        None,
        "a malformed batch takes no rank slot"
    );
    assert_eq!(
        ingest(&mut ing, &batch(9, &[store(&[1], None, &t, 4)])).ids(),
        [0]
    );
    assert!(ing.rank_allowed(0) && ing.rank_allowed(9));
    assert!(!ing.rank_allowed(5));

    let o = ingest(
        &mut ing,
        &batch(5, &[store(&[2], None, &t, 4), invalid_event(), clear()]),
    );
    assert_eq!(o.u.dp_rank, Some(5), "the batch's rank is reported");
    assert_eq!((o.rejected(Reason::DpRank), o.rejected_total()), (1, 1));
    assert_eq!((o.u.payloads.len(), o.u.first_event_id), (0, None));
    assert_eq!(ing.next_event_id(5), 0);
    assert!(
        !ing.rank_allowed(5),
        "a rejected batch does not open the rank"
    );
    // the manual API is refused the same way
    assert_eq!(
        read(
            Mode::EventPlane,
            &ing.stored(&t, &[3], 4, None, None, None, 5, NOW)
        )
        .rejected(Reason::DpRank),
        1
    );
    assert_eq!(
        read(Mode::EventPlane, &ing.removed(&[3], 5, NOW)).rejected(Reason::DpRank),
        1
    );
    assert_eq!(
        read(Mode::EventPlane, &ing.cleared(5, NOW)).rejected(Reason::DpRank),
        1
    );
    assert_eq!(ing.next_event_id(5), 0);

    assert_eq!(counter(&ing, "rejected_dp_rank"), 4);
    assert_eq!(counter(&ing, "rejected_malformed"), 1);
    assert_eq!(counter(&ing, "batches"), 4);
    assert_eq!(
        counter(&ing, "rejected_invalid"),
        0,
        "the events of a rejected batch are not looked at"
    );
    // the seen ranks keep working, and their ids did not move
    assert_eq!(ingest(&mut ing, &batch(9, &[remove(&[1])])).ids(), [1]);
    assert_eq!(ingest(&mut ing, &batch(0, &[remove(&[1])])).ids(), [1]);
}

#[test]
fn configured_dp_ranks_accept_only_those() {
    let mut ing = ingestor(IngestorConfig {
        dp_ranks: Some(vec![2, 4]),
        max_dp_ranks: 64,
        ..cfg(4)
    });
    let t = toks(4, 1);
    assert!(ing.rank_allowed(2) && ing.rank_allowed(4));
    assert!(!ing.rank_allowed(0) && !ing.rank_allowed(3));
    let o = ingest(&mut ing, &batch(0, &[store(&[1], None, &t, 4)]));
    assert_eq!((o.rejected(Reason::DpRank), o.u.payloads.len()), (1, 0));
    // a batch without a rank is rank 0: rejected too
    let mut b = batch(0, &[store(&[1], None, &t, 4)]);
    b[0] = 0x92;
    b.pop();
    assert_eq!(ingest(&mut ing, &b).rejected(Reason::DpRank), 1);
    assert_eq!(
        ingest(&mut ing, &batch(2, &[store(&[1], None, &t, 4)])).ids(),
        [0]
    );
    assert_eq!(
        ingest(&mut ing, &batch(4, &[store(&[1], None, &t, 4)])).ids(),
        [0]
    );
    assert_eq!(
        read(Mode::EventPlane, &ing.cleared(7, NOW)).rejected(Reason::DpRank),
        1
    );
    assert_eq!(counter(&ing, "rejected_dp_rank"), 3);
}

#[test]
fn dp_ranks_up_to_u32_max_are_exact() {
    for rank in [1u32 << 31, u32::MAX - 1, u32::MAX] {
        let mut ing = ingestor(cfg(4));
        let o = ingest(&mut ing, &batch(rank, &[store(&[1], None, &toks(4, 1), 4)]));
        assert_eq!(o.u.dp_rank, Some(rank));
        assert_eq!(o.evs[0].dp_rank, rank);
        assert_eq!(ing.next_event_id(rank), 1);
        let o = read(Mode::EventPlane, &ing.cleared(rank, NOW));
        assert_eq!(
            (o.u.dp_rank, o.data()),
            (Some(rank), vec![EventData::Cleared])
        );
    }
}

// ================================================================================================
// truncation warnings

#[test]
fn truncation_warns_at_most_three_times() {
    let mut ing = ingestor(cfg(4));
    let t = toks(9, 1); // 2 full blocks of 4, one token over
    let mut w = Vec::new();
    for i in 0..3u64 {
        let o = ingest(
            &mut ing,
            &batch(
                0,
                &[store(&[10 * i + 1, 10 * i + 2, 10 * i + 3], None, &t, 4)],
            ),
        );
        assert_eq!(
            stored_hashes(&o.data()[0]),
            [10 * i + 1, 10 * i + 2],
            "the store stops before the block without its tokens"
        );
        assert_eq!(o.u.warnings.len(), 1, "each call carries its own warning");
        w.extend(o.u.warnings);
    }
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(w.iter().all(|m| m.contains("truncated")), "{w:?}");
    // a call without a truncation carries no warning
    let o = ingest(&mut ing, &batch(0, &[store(&[100], None, &toks(4, 2), 4)]));
    assert!(o.u.warnings.is_empty());
    // a 4th truncated store is counted, but warns no more
    let o = ingest(&mut ing, &batch(0, &[store(&[41, 42, 43], None, &t, 4)]));
    assert_eq!(stored_hashes(&o.data()[0]), [41, 42]);
    assert!(o.u.warnings.is_empty());
    assert_eq!(counter(&ing, "truncated_stores"), 4);
    // extra tokens after the last hash are not a truncation
    ingest(&mut ing, &batch(0, &[store(&[50], None, &t, 4)]));
    assert_eq!(counter(&ing, "truncated_stores"), 4);
    // the manual API truncates and counts the same way
    let o = read(
        Mode::EventPlane,
        &ing.stored(&t, &[61, 62, 63], 4, None, None, None, 0, NOW),
    );
    assert_eq!(stored_hashes(&o.data()[0]), [61, 62]);
    assert_eq!(counter(&ing, "truncated_stores"), 5);
    assert!(o.u.warnings.is_empty());
}

// ================================================================================================
// the manual API

#[test]
fn manual_calls_share_the_id_counters_and_checks() {
    let mut ing = ingestor(cfg(4));
    let t = toks(8, 3);
    assert_eq!(
        ingest(&mut ing, &batch(0, &[store(&[1], None, &t[..4], 4)])).ids(),
        [0]
    );
    let o = read(
        Mode::EventPlane,
        &ing.stored(&t[4..], &[2], 4, Some(1), None, None, 0, NOW),
    );
    assert_eq!(o.ids(), [1]);
    assert_eq!(
        o.data(),
        [EventData::Stored {
            parent_hash: Some(1),
            blocks: o.evs[0].data.clone().blocks()
        }]
    );
    assert_eq!(
        read(Mode::EventPlane, &ing.removed(&[2], 0, NOW)).ids(),
        [2]
    );
    assert_eq!(ingest(&mut ing, &batch(0, &[remove(&[1])])).ids(), [3]);
    assert_eq!(
        read(Mode::EventPlane, &ing.cleared(0, NOW)).data(),
        [EventData::Cleared]
    );
    assert_eq!(ing.next_event_id(0), 5);

    // checks 5-7, no id consumed
    type Case<'a> = (&'a [u32], &'a [u64], u64, Option<u64>, Reason);
    let cases: [Case; 5] = [
        (&t[..4], &[], 4, None, Reason::Empty),
        (&t, &[7, 7], 4, None, Reason::SelfReference),
        (&t[..4], &[7], 4, Some(7), Reason::SelfReference),
        (&t[..4], &[7], 8, None, Reason::BlockSize),
        (&t[..3], &[7], 4, None, Reason::BlockSize),
    ];
    for (tokens, hs, bs, parent, reason) in cases {
        let o = read(
            Mode::EventPlane,
            &ing.stored(tokens, hs, bs, parent, None, None, 0, NOW),
        );
        assert_eq!(
            (o.rejected(reason), o.rejected_total(), o.evs.len()),
            (1, 1, 0),
            "{}",
            reason.name()
        );
        assert_eq!(o.u.dp_rank, Some(0));
    }
    let o = read(Mode::EventPlane, &ing.removed(&[], 0, NOW));
    assert_eq!(o.rejected(Reason::Empty), 1);
    assert_eq!(ing.next_event_id(0), 5);
    assert_eq!(counter(&ing, "rejected_empty"), 2);
    assert_eq!(counter(&ing, "rejected_self_reference"), 2);
    assert_eq!(counter(&ing, "rejected_block_size"), 2);
    assert_eq!(
        read(Mode::EventPlane, &ing.removed(&[9], 0, NOW)).ids(),
        [5]
    );
}

trait Blocks {
    fn blocks(self) -> Vec<dynamo_kv_core::wire::StoredBlock>;
}

impl Blocks for EventData {
    fn blocks(self) -> Vec<dynamo_kv_core::wire::StoredBlock> {
        match self {
            EventData::Stored { blocks, .. } => blocks,
            d => panic!("not a store: {d:?}"),
        }
    }
}

#[test]
fn a_manual_store_emits_the_same_bytes_as_the_engine_event() {
    let t = toks(12, 8);
    let mm = vec![
        None,
        Some(BlockExtraInfo {
            mm_objects: vec![MmObject {
                mm_hash: 99,
                offsets: vec![(1, 3)],
            }],
        }),
        None,
    ];
    for mode in [Mode::EventPlane, Mode::JetStream] {
        let mut a = ingestor(IngestorConfig { mode, ..cfg(4) });
        let mut b = ingestor(IngestorConfig { mode, ..cfg(4) });
        // with a LoRA name and explicit multimodal info
        let mut ev = Vec::new();
        {
            let mut w = Writer::new(&mut ev);
            w.map(7);
            w.str("type");
            w.str("BlockStored");
            w.str("block_hashes");
            w.array(3);
            for h in [5u64, 6, u64::MAX] {
                w.uint(h);
            }
            w.str("parent_block_hash");
            w.uint(4);
            w.str("token_ids");
            w.array(t.len());
            for &x in &t {
                w.uint(x as u64);
            }
            w.str("block_size");
            w.uint(4);
            w.str("lora_name");
            w.str("my-adapter");
            w.str("block_mm_infos");
            w.array(3);
            w.nil();
            w.map(1);
            w.str("mm_objects");
            w.array(1);
            w.map(2);
            w.str("mm_hash");
            w.uint(99);
            w.str("offsets");
            w.array(1);
            w.array(2);
            w.uint(1);
            w.uint(3);
            w.nil();
        }
        let from_engine = a.ingest(&batch(0, &[ev]), NOW);
        let manual = b.stored(
            &t,
            &[5, 6, u64::MAX],
            4,
            Some(4),
            Some("my-adapter"),
            Some(mm.clone()),
            0,
            NOW,
        );
        assert_eq!(from_engine, manual, "{mode:?}");
        let o = read(mode, &manual);
        let blocks = o.evs[0].data.clone().blocks();
        assert_eq!(
            blocks.iter().map(|b| b.tokens_hash).collect::<Vec<_>>(),
            compute_block_hashes(&t, 4, Some("my-adapter"), Some(&mm[..]))
        );
        assert_eq!(blocks[1].mm_extra_info, mm[1]);
    }
}

// ================================================================================================
// JetStream mode

#[test]
fn jetstream_payloads_are_router_event_json() {
    let mut ing = ingestor(IngestorConfig {
        mode: Mode::JetStream,
        ..cfg(4)
    });
    let o = read(Mode::JetStream, &ing.ingest(&batch(0, &[clear()]), NOW));
    assert_eq!(
        String::from_utf8(o.u.payloads[0].clone()).unwrap(),
        format!("{{\"worker_id\":{WORKER},\"event\":{{\"event_id\":0,\"data\":\"cleared\",\"dp_rank\":0}}}}")
    );
    let o = read(Mode::JetStream, &ing.removed(&[u64::MAX, 1], 0, NOW));
    assert_eq!(
        String::from_utf8(o.u.payloads[0].clone()).unwrap(),
        format!("{{\"worker_id\":{WORKER},\"event\":{{\"event_id\":1,\"data\":{{\"removed\":{{\"block_hashes\":[18446744073709551615,1]}}}},\"dp_rank\":0}}}}")
    );

    // the same events as the event plane would carry in its envelopes
    let t = toks(8, 2);
    let b = batch(
        3,
        &[
            store(&[1, 2], None, &t, 4),
            remove(&[2]),
            store(&[3], Some(1), &t[4..], 4),
        ],
    );
    let mut ep = ingestor(cfg(4));
    let mut js = ingestor(IngestorConfig {
        mode: Mode::JetStream,
        ..cfg(4)
    });
    let a = read(Mode::EventPlane, &ep.ingest(&b, NOW));
    let j = read(Mode::JetStream, &js.ingest(&b, NOW));
    assert_eq!(a.evs, j.evs);
    assert_eq!(j.ids(), [0, 1, 2]);
    assert_eq!(
        counter(&js, "payload_bytes"),
        j.u.payloads.iter().map(|p| p.len() as u64).sum::<u64>()
    );
}

// ================================================================================================
// configuration

#[test]
fn new_rejects_bad_configurations() {
    assert_eq!(
        Ingestor::new(IngestorConfig {
            kv_block_size: 0,
            ..cfg(4)
        })
        .err(),
        Some(ConfigError::KvBlockSize)
    );
    assert_eq!(
        Ingestor::new(IngestorConfig {
            max_dp_ranks: 0,
            ..cfg(4)
        })
        .err(),
        Some(ConfigError::MaxDpRanks)
    );
    assert_eq!(
        Ingestor::new(IngestorConfig {
            dp_ranks: Some(vec![]),
            ..cfg(4)
        })
        .err(),
        Some(ConfigError::DpRanks)
    );
    assert_eq!(
        Ingestor::new(IngestorConfig {
            dp_ranks: Some(vec![1, 0, 1]),
            ..cfg(4)
        })
        .err(),
        Some(ConfigError::DpRanks)
    );
    assert!(Ingestor::new(IngestorConfig {
        dp_ranks: Some(vec![u32::MAX, 0]),
        ..cfg(1)
    })
    .is_ok());
    assert!(Ingestor::new(IngestorConfig {
        max_dp_ranks: 1,
        kv_block_size: u32::MAX,
        ..cfg(4)
    })
    .is_ok());
}

// ================================================================================================
// KV groups are learned per rank and kept across batches (SPEC 3 step 4)

#[test]
fn groups_are_learned_per_rank_across_batches() {
    let mut ing = ingestor(cfg(4));
    let t = toks(4, 1);
    let sw = [
        ("group_idx", V::Uint(1)),
        ("kv_cache_spec_kind", V::Str("sliding_window")),
    ];
    let full = [
        ("group_idx", V::Uint(2)),
        ("kv_cache_spec_kind", V::Str("full_attention")),
    ];
    let o = ingest(
        &mut ing,
        &batch(
            0,
            &[
                store_ext(&[1], None, &t, 4, &sw),
                store_ext(&[2], None, &t, 4, &full),
            ],
        ),
    );
    assert_eq!((o.rejected(Reason::FilteredGroup), o.evs.len()), (1, 1));
    // later batches: group 1 is known non-main, group 2 main, group 0 kept, an unknown group 3 dropped
    let g = |n: u64| [("group_idx", V::Uint(n))];
    let o = ingest(
        &mut ing,
        &batch(
            0,
            &[
                store_ext(&[3], None, &t, 4, &g(1)),
                store_ext(&[4], None, &t, 4, &g(2)),
                store_ext(&[5], None, &t, 4, &g(0)),
                store_ext(&[6], None, &t, 4, &g(3)),
            ],
        ),
    );
    assert_eq!(
        o.data().iter().flat_map(stored_hashes).collect::<Vec<_>>(),
        [4, 5]
    );
    assert_eq!(o.rejected(Reason::FilteredGroup), 2);
    // removes follow the same rule
    let o = ingest(
        &mut ing,
        &batch(0, &[remove_ext(&[4], &g(1)), remove_ext(&[4], &g(2))]),
    );
    assert_eq!((o.rejected(Reason::FilteredGroup), o.evs.len()), (1, 1));
    // rank 1 learned nothing: only group 0 passes there
    let o = ingest(
        &mut ing,
        &batch(
            1,
            &[
                store_ext(&[7], None, &t, 4, &g(2)),
                store_ext(&[8], None, &t, 4, &g(0)),
            ],
        ),
    );
    assert_eq!(
        o.data().iter().flat_map(stored_hashes).collect::<Vec<_>>(),
        [8]
    );
    // a store rejected by a later check (block_size) still teaches its group
    let teach = [
        ("group_idx", V::Uint(5)),
        ("kv_cache_spec_kind", V::Str("mla_attention")),
    ];
    let o = ingest(
        &mut ing,
        &batch(
            1,
            &[
                store_ext(&[9], None, &t, 8, &teach),
                store_ext(&[10], None, &t, 4, &g(5)),
            ],
        ),
    );
    assert_eq!(
        (
            o.rejected(Reason::BlockSize),
            o.data().iter().flat_map(stored_hashes).collect::<Vec<_>>()
        ),
        (1, vec![10])
    );
}

// ================================================================================================
// ingest_packed is ingest without the allocation

#[test]
fn ingest_packed_gives_the_same_bytes_as_ingest() {
    let mut a = ingestor(cfg(4));
    let mut b = ingestor(cfg(4));
    let t = toks(12, 5);
    let batches = [
        batch(0, &[store(&[1, 2, 3], None, &t, 4)]),
        vec![0xc1],
        batch(1, &[store(&[4], None, &t[..4], 4), invalid_event()]),
        batch(0, &[clear()]),
        batch(1, &[store(&hashes(3000, 1), None, &toks(12_000, 1), 4)]),
        batch(1, &[]),
    ];
    for x in &batches {
        let want = a.ingest(x, NOW);
        assert_eq!(b.ingest_packed(x, NOW), &want[..]);
        assert_eq!(b.take_packed(), want);
    }
    assert_eq!(a.counters(), b.counters());
}

// ================================================================================================
// the counters add up: a seeded random run checked against a model of the ingestor

mod common;
use common::Rng;

/// What the ingestor must do, written independently: per-rank ids and live sets, the reset rule, the
/// splitting, the rank limit, the counters.
struct Model {
    max_ranks: usize,
    ranks: Vec<u32>,
    next: BTreeMap<u32, u64>,
    live: BTreeMap<u32, BTreeSet<u64>>,
    c: BTreeMap<&'static str, u64>,
}

impl Model {
    fn add(&mut self, k: &'static str, n: u64) {
        *self.c.entry(k).or_default() += n;
    }

    /// Ok(index) when the rank may be used (registering it), Err when it is over the limit.
    fn rank(&mut self, r: u32) -> Result<(), ()> {
        if !self.ranks.contains(&r) {
            if self.ranks.len() >= self.max_ranks {
                self.add("rejected_dp_rank", 1);
                return Err(());
            }
            self.ranks.push(r);
        }
        Ok(())
    }

    fn emit(&mut self, r: u32, data: EventData, out: &mut Vec<(u64, EventData)>) {
        let id = self.next.entry(r).or_default();
        out.push((*id, data));
        *id += 1;
    }

    fn apply(&mut self, r: u32, c: Converted, out: &mut Vec<(u64, EventData)>) {
        match c {
            Converted::Stored(s) => {
                if s.truncated.is_some() {
                    self.add("truncated_stores", 1);
                }
                let mut parent = s.parent_hash;
                for chunk in s.blocks.chunks(1024) {
                    self.live
                        .entry(r)
                        .or_default()
                        .extend(chunk.iter().map(|b| b.block_hash));
                    self.add("emitted_stored", 1);
                    self.add("blocks_stored", chunk.len() as u64);
                    self.emit(
                        r,
                        EventData::Stored {
                            parent_hash: parent,
                            blocks: chunk.to_vec(),
                        },
                        out,
                    );
                    parent = chunk.last().map(|b| b.block_hash);
                }
            }
            Converted::Removed(h) => self.remove(r, &h, out),
            Converted::Cleared => {
                self.add("resets", 1);
                let live = std::mem::take(self.live.entry(r).or_default());
                if self.ranks.len() == 1 {
                    self.add("emitted_cleared", 1);
                    self.emit(r, EventData::Cleared, out);
                } else {
                    self.remove(r, &live.into_iter().collect::<Vec<_>>(), out);
                }
            }
        }
    }

    fn remove(&mut self, r: u32, h: &[u64], out: &mut Vec<(u64, EventData)>) {
        for chunk in h.chunks(4096) {
            let live = self.live.entry(r).or_default();
            for x in chunk {
                live.remove(x);
            }
            self.add("emitted_removed", 1);
            self.add("blocks_removed", chunk.len() as u64);
            self.emit(
                r,
                EventData::Removed {
                    block_hashes: chunk.to_vec(),
                },
                out,
            );
        }
    }
}

/// The counter name of a rejection reason.
fn rej_name(r: Reason) -> &'static str {
    COUNTER_NAMES
        .iter()
        .copied()
        .find(|n| n.strip_prefix("rejected_") == Some(r.name()))
        .unwrap()
}

/// Expected (event id, data) pairs of one call; None for a malformed batch.
type Emitted = Vec<(u64, EventData)>;

#[test]
fn counters_add_up_over_a_random_run() {
    const BS: u32 = 2;
    let mut rng = Rng(0x0dd5_eed5);
    let mut ing = ingestor(IngestorConfig {
        max_dp_ranks: 3,
        ..cfg(BS)
    });
    let mut m = Model {
        max_ranks: 3,
        ranks: vec![],
        next: BTreeMap::new(),
        live: BTreeMap::new(),
        c: BTreeMap::new(),
    };
    let mut next_hash = 1u64 << 62;
    let mut payload_bytes = 0u64;
    let mut seq = 0u64;
    let mut stored_pool: Vec<u64> = Vec::new();
    for step in 0..3000 {
        // rank 0 alone at first (so resets take the `cleared` form), then 4 ranks offered, 3 allowed
        let r = if step < 300 { 0 } else { rng.below(4) as u32 };
        let now = NOW + step;
        // the call, and what the model expects from it
        let (out, rejected, expect): (Vec<u8>, [u32; REASON_COUNT], Option<Emitted>) = match rng
            .below(10)
        {
            0..=6 => {
                // an engine batch of 0..6 events
                let n = rng.below(7) as usize;
                let mut evs = Vec::new();
                for _ in 0..n {
                    evs.push(match rng.below(12) {
                        0..=4 => {
                            let max = if rng.below(20) == 0 { 1500 } else { 4 };
                            let blocks = 1 + rng.below(max) as usize;
                            let hs: Vec<u64> = (0..blocks)
                                .map(|_| {
                                    next_hash += 1 + rng.below(3);
                                    next_hash
                                })
                                .collect();
                            stored_pool.extend(&hs);
                            let tokens = blocks * BS as usize - (rng.below(6) == 0) as usize; // sometimes truncated
                            let parent = if rng.below(2) == 0 {
                                None
                            } else {
                                Some(rng.next())
                            };
                            store(
                                &hs,
                                parent,
                                &toks(tokens.max(1), rng.below(1000) as u32),
                                BS as u64,
                            )
                        }
                        5..=7 if !stored_pool.is_empty() => {
                            let k = 1 + rng.below(6) as usize;
                            let hs: Vec<u64> = (0..k)
                                .map(|_| stored_pool[rng.below(stored_pool.len() as u64) as usize])
                                .collect();
                            remove(&hs)
                        }
                        8 => clear(),
                        9 => invalid_event(),
                        10 => store(&[7, 7], None, &toks(4, 1), BS as u64),
                        _ => unknown_event(),
                    });
                }
                let mut b = batch(r, &evs);
                if rng.below(25) == 0 {
                    b.truncate(b.len() / 2);
                }
                m.add("batches", 1);
                let out = ing.ingest(&b, now);
                match decode_engine_batch(&b, BS) {
                    None => {
                        m.add("rejected_malformed", 1);
                        let mut rej = [0; REASON_COUNT];
                        rej[Reason::Malformed as usize] = 1;
                        (out, rej, None)
                    }
                    Some(d) => {
                        let mut rej = [0; REASON_COUNT];
                        let mut expect = Vec::new();
                        if m.rank(r).is_err() {
                            rej[Reason::DpRank as usize] = 1;
                        } else {
                            m.add(
                                "events_in",
                                d.events.len() as u64
                                    + d.rejected.iter().map(|&x| x as u64).sum::<u64>(),
                            );
                            for reason in Reason::ALL {
                                m.add(rej_name(reason), d.rejected[reason as usize] as u64);
                            }
                            rej = d.rejected;
                            for c in d.events {
                                m.apply(r, c, &mut expect);
                            }
                        }
                        (out, rej, Some(expect))
                    }
                }
            }
            7 => {
                let blocks = 1 + rng.below(3) as usize;
                let hs: Vec<u64> = (0..blocks)
                    .map(|_| {
                        next_hash += 1;
                        next_hash
                    })
                    .collect();
                stored_pool.extend(&hs);
                let t = toks(blocks * BS as usize, 3);
                let out = ing.stored(&t, &hs, BS as u64, None, None, None, r, now);
                let mut rej = [0; REASON_COUNT];
                let mut expect = Vec::new();
                if m.rank(r).is_err() {
                    rej[Reason::DpRank as usize] = 1;
                } else {
                    let d = decode_engine_batch(&batch(r, &[store(&hs, None, &t, BS as u64)]), BS)
                        .unwrap();
                    for c in d.events {
                        m.apply(r, c, &mut expect);
                    }
                }
                (out, rej, Some(expect))
            }
            8 => {
                let hs: Vec<u64> = (0..rng.below(4))
                    .map(|_| {
                        if stored_pool.is_empty() {
                            1
                        } else {
                            stored_pool[rng.below(stored_pool.len() as u64) as usize]
                        }
                    })
                    .collect();
                let out = ing.removed(&hs, r, now);
                let mut rej = [0; REASON_COUNT];
                let mut expect = Vec::new();
                if m.rank(r).is_err() {
                    rej[Reason::DpRank as usize] = 1;
                } else if hs.is_empty() {
                    m.add("rejected_empty", 1);
                    rej[Reason::Empty as usize] = 1;
                } else {
                    m.remove(r, &hs, &mut expect);
                }
                (out, rej, Some(expect))
            }
            _ => {
                let out = ing.cleared(r, now);
                let mut rej = [0; REASON_COUNT];
                let mut expect = Vec::new();
                if m.rank(r).is_err() {
                    rej[Reason::DpRank as usize] = 1;
                } else {
                    m.apply(r, Converted::Cleared, &mut expect);
                }
                (out, rej, Some(expect))
            }
        };
        let o = read(Mode::EventPlane, &out);
        assert_eq!(o.u.rejected, rejected, "step {step}");
        match expect {
            None => assert_eq!((o.u.dp_rank, o.evs.len()), (None, 0), "step {step}"),
            Some(expect) => {
                assert_eq!(o.u.dp_rank, Some(r), "step {step}");
                let got: Vec<(u64, EventData)> =
                    o.evs.iter().map(|e| (e.event_id, e.data.clone())).collect();
                assert_eq!(got, expect, "step {step}");
            }
        }
        for e in &o.envs {
            assert_eq!((e.sequence, e.published_at), (seq, now), "step {step}");
            seq += 1;
        }
        payload_bytes += o.u.payloads.iter().map(|p| p.len() as u64).sum::<u64>();
        for &rank in &m.ranks {
            assert_eq!(
                ing.next_event_id(rank),
                m.next.get(&rank).copied().unwrap_or(0),
                "step {step}, rank {rank}"
            );
        }
    }
    m.add("payload_bytes", payload_bytes);
    m.c.retain(|_, v| *v != 0);
    assert_eq!(counters(&ing), m.c);
    // the run covered what it is meant to
    for k in [
        "emitted_stored",
        "emitted_removed",
        "emitted_cleared",
        "truncated_stores",
        "resets",
        "rejected_dp_rank",
        "rejected_malformed",
        "rejected_invalid",
        "rejected_empty",
        "rejected_self_reference",
        "rejected_unknown_type",
    ] {
        assert!(
            m.c.get(k).copied().unwrap_or(0) > 0,
            "the random run never hit {k}: {:?}",
            m.c
        );
    }
    assert!(
        m.c["blocks_stored"] > m.c["emitted_stored"],
        "some stores were split"
    );
}
