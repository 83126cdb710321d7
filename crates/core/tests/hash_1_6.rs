//! The core's hashing against Dynamo 1.6.1's block-hash vectors and salt seeds
//! (__test__/fixtures/dynamo-1.6/block-hashes-1.6.json, an unchanged copy of the shared fixture).

use dynamo_kv_core::hash::{
    compute_block_hashes, compute_block_hashes_with, salt_seed, tokens_le, xxh3_seeded,
    BlockHashOptions,
};
use dynamo_kv_core::wire::BlockExtraInfo;
use serde_json::Value;

mod fixture_json;
use fixture_json::{mm_from, u64s};

fn fixture() -> Value {
    fixture_json::fixture("dynamo-1.6/block-hashes-1.6.json")
}

#[test]
fn dynamo_1_6_vectors() {
    let f = fixture();
    let vectors = f["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 21);
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        let tokens: Vec<u32> = v["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| u32::try_from(t.as_u64().unwrap()).unwrap())
            .collect();
        let bs = v["kv_block_size"].as_u64().unwrap() as usize;
        let mm: Option<Vec<Option<BlockExtraInfo>>> = v["block_mm_infos"]
            .as_array()
            .map(|a| a.iter().map(mm_from).collect());
        let opts = BlockHashOptions {
            lora_name: v["lora_name"].as_str(),
            cache_salt: v["cache_namespace"].as_str(),
            block_mm_infos: mm.as_deref(),
            eagle: v["is_eagle"].as_bool().unwrap_or(false),
        };
        let want: Vec<u64> = v["expected"].as_array().unwrap().iter().map(u64s).collect();
        assert_eq!(
            compute_block_hashes_with(&tokens, bs, &opts),
            want,
            "{name}"
        );
        assert_eq!(
            salt_seed(opts.lora_name, opts.cache_salt),
            u64s(&v["xxh3_seed"]),
            "{name}: seed"
        );
        // with no salt and no Eagle, the Dynamo 1.0 entry point gives the same hashes
        if opts.cache_salt.is_none() && !opts.eagle {
            assert_eq!(
                compute_block_hashes(&tokens, bs, opts.lora_name, mm.as_deref()),
                want,
                "{name}: 1.0 entry point"
            );
        }
    }
}

#[test]
fn dynamo_1_6_salt_seeds() {
    let f = fixture();
    let seeds = f["salt_seeds"].as_array().unwrap();
    assert_eq!(seeds.len(), 5);
    let tokens: Vec<u32> = (0..8).collect();
    for s in seeds {
        let (lora, salt) = (s["lora_name"].as_str(), s["cache_namespace"].as_str());
        let seed = u64s(&s["seed"]);
        assert_eq!(salt_seed(lora, salt), seed, "{s}");
        let opts = BlockHashOptions {
            lora_name: lora,
            cache_salt: salt,
            ..BlockHashOptions::default()
        };
        let bytes = tokens_le(&tokens);
        assert_eq!(
            compute_block_hashes_with(&tokens, 4, &opts),
            vec![
                xxh3_seeded(&bytes[..16], seed),
                xxh3_seeded(&bytes[16..], seed)
            ],
            "{s}"
        );
    }
}

#[test]
fn eagle_windows_and_edges_never_panic() {
    let tokens: Vec<u32> = (0..25).map(|i| i * 7919).collect();
    let bytes = tokens_le(&tokens);
    let eagle = BlockHashOptions {
        eagle: true,
        ..BlockHashOptions::default()
    };
    let got = compute_block_hashes_with(&tokens, 8, &eagle);
    let want: Vec<u64> = (0..3)
        .map(|i| xxh3_seeded(&bytes[i * 32..i * 32 + 36], 1337))
        .collect();
    assert_eq!(got, want);
    assert_eq!(compute_block_hashes_with(&tokens[..24], 8, &eagle).len(), 2);
    assert_eq!(compute_block_hashes_with(&tokens[..8], 8, &eagle).len(), 0);
    assert!(compute_block_hashes_with(&[], 8, &eagle).is_empty());
    assert!(compute_block_hashes_with(&tokens, 0, &eagle).is_empty());
    assert!(compute_block_hashes_with(&tokens, usize::MAX, &eagle).is_empty());
    assert_eq!(compute_block_hashes_with(&tokens, 24, &eagle).len(), 1);
    assert_eq!(compute_block_hashes_with(&tokens, 25, &eagle).len(), 0);
}
