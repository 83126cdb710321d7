//! Shared by the integration tests that read the JSON fixtures in `__test__/fixtures/` (copied
//! unchanged from the project's shared fixtures): loading one, and reading the values they hold.
#![allow(dead_code)]

use dynamo_kv_core::wire::{BlockExtraInfo, MmObject};
use serde_json::Value;

/// The fixture at `__test__/fixtures/{name}` (e.g. `router-wire.json`, `dynamo-1.6/discovery-1.6.json`).
pub fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/../../__test__/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).expect(&path)).unwrap()
}

/// A u64 written as a decimal string (the fixtures' form above 2^53) or as a JSON number.
pub fn u64s(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().unwrap(),
        Value::Number(n) => n.as_u64().unwrap(),
        _ => panic!("not a u64: {v}"),
    }
}

/// A block's multimodal info `{ mm_objects: [{ mm_hash, offsets: [[start, end], ...] }] }`; None for null.
pub fn mm_from(v: &Value) -> Option<BlockExtraInfo> {
    v.get("mm_objects").map(|objs| BlockExtraInfo {
        mm_objects: objs
            .as_array()
            .unwrap()
            .iter()
            .map(|o| MmObject {
                mm_hash: u64s(&o["mm_hash"]),
                offsets: o["offsets"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_u64().unwrap() as u32))
                    .collect(),
            })
            .collect(),
    })
}
