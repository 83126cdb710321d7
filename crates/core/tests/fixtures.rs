//! The core against the shared fixtures (copied unchanged into __test__/fixtures/): engine batches,
//! block-hash vectors and Dynamo 1.0 wire bytes.

use dynamo_kv_core::convert::{decode_engine_batch, Converted, Reason};
use dynamo_kv_core::hash::{compute_block_hashes, xxh3_seeded};
use dynamo_kv_core::wire::{
    decode_router_event_json, decode_router_event_msgpack, jetstream_stream_name,
    write_active_load, write_envelope, write_router_event_json, write_router_event_msgpack,
    BlockExtraInfo,
};
use serde_json::Value;

mod fixture_json;
use fixture_json::{fixture, mm_from, u64s};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn opt_u64s(v: &Value) -> Option<u64> {
    (!v.is_null()).then(|| u64s(v))
}

/// The expected events as the fixture writes them, rendered for comparison.
fn expected_events(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| match e["type"].as_str().unwrap() {
            "stored" => {
                let blocks: Vec<String> = e["blocks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| {
                        format!(
                            "{}/{}/{:?}",
                            u64s(&b["block_hash"]),
                            u64s(&b["tokens_hash"]),
                            mm_from(&b["mm_extra_info"])
                        )
                    })
                    .collect();
                format!(
                    "stored parent={:?} {:?}",
                    opt_u64s(&e["parent_hash"]),
                    blocks
                )
            }
            "removed" => format!(
                "removed {:?}",
                e["block_hashes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(u64s)
                    .collect::<Vec<_>>()
            ),
            "cleared" => "cleared".to_string(),
            t => panic!("unknown type {t}"),
        })
        .collect()
}

fn rendered(events: &[Converted]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            Converted::Stored(s) => {
                let blocks: Vec<String> = s
                    .blocks
                    .iter()
                    .map(|b| format!("{}/{}/{:?}", b.block_hash, b.tokens_hash, b.mm_extra_info))
                    .collect();
                format!("stored parent={:?} {:?}", s.parent_hash, blocks)
            }
            Converted::Removed(h) => format!("removed {h:?}"),
            Converted::Cleared => "cleared".to_string(),
        })
        .collect()
}

#[test]
fn engine_batches_convert_as_expected() {
    let f = fixture("engine-batches.json");
    let cases = f["cases"].as_array().unwrap();
    assert!(cases.len() >= 70);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let bytes = hex(case["hex"].as_str().unwrap());
        let bs = case["kv_block_size"].as_u64().unwrap() as u32;
        let expect = &case["expect"];
        let got = decode_engine_batch(&bytes, bs);
        if expect.get("error").is_some() {
            assert_eq!(expect["error"], "malformed");
            assert!(got.is_none(), "{name}: expected malformed, got {got:?}");
            assert!(
                dynamo_kv_core::engine::peek_batch(&bytes).is_err(),
                "{name}: peek should fail"
            );
            continue;
        }
        let got = got.unwrap_or_else(|| panic!("{name}: unexpectedly malformed"));
        assert_eq!(
            got.dp_rank as u64,
            expect["dp_rank"].as_u64().unwrap(),
            "{name}: dp_rank"
        );
        assert_eq!(
            rendered(&got.events),
            expected_events(&expect["events"]),
            "{name}: events"
        );
        for reason in Reason::ALL {
            let want = expect["rejected"]
                .get(reason.name())
                .map_or(0, |v| v.as_u64().unwrap());
            assert_eq!(
                got.rejected[reason as usize] as u64,
                want,
                "{name}: rejected {}",
                reason.name()
            );
        }
        assert_eq!(
            dynamo_kv_core::engine::peek_batch(&bytes).map(|p| p.0),
            Ok(got.dp_rank),
            "{name}: peek"
        );
    }
}

#[test]
fn block_hash_vectors() {
    let f = fixture("block-hashes.json");
    let raw = &f["raw_hash"];
    assert_eq!(
        xxh3_seeded(
            raw["input_utf8"].as_str().unwrap().as_bytes(),
            u64s(&raw["seed"])
        ),
        u64s(&raw["xxh3_64"])
    );
    for v in f["vectors"].as_array().unwrap() {
        let tokens: Vec<u32> = v["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect();
        let mm: Option<Vec<Option<BlockExtraInfo>>> = v["block_mm_infos"]
            .as_array()
            .map(|a| a.iter().map(mm_from).collect());
        let got = compute_block_hashes(
            &tokens,
            v["kv_block_size"].as_u64().unwrap() as usize,
            v["lora_name"].as_str(),
            mm.as_deref(),
        );
        let want: Vec<u64> = v["expected"].as_array().unwrap().iter().map(u64s).collect();
        assert_eq!(got, want, "{}", v["name"]);
    }
}

#[test]
fn router_events_encode_and_decode_byte_exact() {
    let f = fixture("router-wire.json");
    for e in f["router_events"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        let json = e["router_event_json"].as_str().unwrap();
        let mp = hex(e["router_event_msgpack_hex"].as_str().unwrap());
        let from_json = decode_router_event_json(json.as_bytes()).unwrap();
        let from_mp = decode_router_event_msgpack(&mp).unwrap();
        assert_eq!(from_json, from_mp, "{name}");
        let mut out = Vec::new();
        write_router_event_msgpack(&mut out, &from_json);
        assert_eq!(out, mp, "{name}: msgpack");
        out.clear();
        write_router_event_json(&mut out, &from_mp);
        assert_eq!(String::from_utf8(out).unwrap(), json, "{name}: json");
    }
}

#[test]
fn envelopes_active_load_and_stream_names() {
    let f = fixture("router-wire.json");
    for e in f["envelopes"].as_array().unwrap() {
        let mut out = Vec::new();
        write_envelope(
            &mut out,
            u64s(&e["publisher_id"]),
            u64s(&e["sequence"]),
            u64s(&e["published_at"]),
            e["topic"].as_str().unwrap(),
            &hex(e["payload_hex"].as_str().unwrap()),
        );
        assert_eq!(
            out,
            hex(e["envelope_msgpack_hex"].as_str().unwrap()),
            "{}",
            e["name"]
        );
    }
    let al = &f["active_load"];
    let mut out = Vec::new();
    write_active_load(
        &mut out,
        u64s(&al["value"]["worker_id"]),
        al["value"]["dp_rank"].as_u64().unwrap() as u32,
        opt_u64s(&al["value"]["active_decode_blocks"]),
        opt_u64s(&al["value"]["active_prefill_tokens"]),
    );
    assert_eq!(out, hex(al["msgpack_hex"].as_str().unwrap()));
    for s in f["jetstream_stream_names"].as_array().unwrap() {
        assert_eq!(
            jetstream_stream_name(
                s["namespace"].as_str().unwrap(),
                s["component"].as_str().unwrap()
            ),
            s["stream"].as_str().unwrap()
        );
    }
}

#[test]
fn recovery_responses_match_dynamo_json() {
    use dynamo_kv_core::local::{write_range_result_json, LocalIndexer, RangeResult};
    let f = fixture("router-wire.json");
    let body = |name: &str| -> String {
        f["recovery_json"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()["json"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let json = |r: &RangeResult| {
        let mut out = Vec::new();
        write_range_result_json(&mut out, r);
        String::from_utf8(out).unwrap()
    };
    // the Events body: one removed event with u64 values above 2^53
    let events = body("events");
    let inner = &events["{\"Events\":[".len()..events.len() - 2];
    let ev = decode_router_event_json(inner.as_bytes()).unwrap();
    assert_eq!(json(&RangeResult::Events(vec![ev])), events);
    assert_eq!(
        json(&RangeResult::TreeDump(vec![])),
        body("tree_dump_empty")
    );
    assert_eq!(
        json(&RangeResult::InvalidRange {
            start_id: 5,
            end_id: 3
        }),
        body("invalid_range")
    );
    assert_eq!(
        json(&RangeResult::Error(
            "worker_id mismatch: asked 8, this is 7".into()
        )),
        body("error")
    );
    // "buffer holds ids 0..9, request start 15 with no end: end defaults to the newest id"
    let mut local = LocalIndexer::new(1024);
    for id in 0..10u64 {
        let removed = format!("{{\"worker_id\":7,\"event\":{{\"event_id\":{id},\"data\":{{\"removed\":{{\"block_hashes\":[1]}}}},\"dp_rank\":0}}}}");
        local.apply_event(&decode_router_event_json(removed.as_bytes()).unwrap());
    }
    assert_eq!(
        json(&local.events_in_range(0, Some(15), None)),
        body("too_new_end_defaulted")
    );
}
