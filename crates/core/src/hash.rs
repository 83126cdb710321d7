//! Dynamo's LocalBlockHash (SPEC 4): XXH3-64 over a block's tokens as u32 little-endian, followed by
//! the block's multimodal object hashes sorted ascending as u64 little-endian.

use crate::wire::BlockExtraInfo;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

pub const BASE_SEED: u64 = 1337;

/// The seed for a LoRA adapter: 1337 + xxh3_64(name, 0), wrapping; `""` (or none) is the base model.
pub fn lora_seed(lora_name: Option<&str>) -> u64 {
    match lora_name {
        Some(name) if !name.is_empty() => BASE_SEED.wrapping_add(xxh3_64(name.as_bytes())),
        _ => BASE_SEED,
    }
}

pub fn xxh3_seeded(data: &[u8], seed: u64) -> u64 {
    xxh3_64_with_seed(data, seed)
}

/// Hashes one block given its tokens already as u32 LE bytes. `scratch` is reused for the mm case.
#[inline]
pub fn block_hash(
    token_bytes: &[u8],
    mm: Option<&BlockExtraInfo>,
    seed: u64,
    scratch: &mut Vec<u8>,
) -> u64 {
    match mm {
        Some(info) if !info.mm_objects.is_empty() => {
            scratch.clear();
            scratch.extend_from_slice(token_bytes);
            let mut hashes: Vec<u64> = info.mm_objects.iter().map(|o| o.mm_hash).collect();
            hashes.sort_unstable();
            for h in hashes {
                scratch.extend_from_slice(&h.to_le_bytes());
            }
            xxh3_64_with_seed(scratch, seed)
        }
        _ => xxh3_64_with_seed(token_bytes, seed),
    }
}

/// Tokens as u32 little-endian bytes.
pub fn tokens_le(tokens: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(tokens.len() * 4);
    for t in tokens {
        out.extend_from_slice(&t.to_le_bytes());
    }
    out
}

/// The hash of every complete block of `tokens` (a trailing partial block is dropped). `mm[i]`, when
/// present, is block i's multimodal info. `block_size` must be > 0.
pub fn compute_block_hashes(
    tokens: &[u32],
    block_size: usize,
    lora_name: Option<&str>,
    mm: Option<&[Option<BlockExtraInfo>]>,
) -> Vec<u64> {
    if block_size == 0 {
        return Vec::new();
    }
    let seed = lora_seed(lora_name);
    let bytes = tokens_le(tokens);
    let stride = block_size * 4;
    let mut scratch = Vec::new();
    (0..tokens.len() / block_size)
        .map(|i| {
            let info = mm.and_then(|m| m.get(i)).and_then(|o| o.as_ref());
            block_hash(
                &bytes[i * stride..(i + 1) * stride],
                info,
                seed,
                &mut scratch,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamo_constants() {
        let tokens: Vec<u32> = (1..=12).collect();
        assert_eq!(
            compute_block_hashes(&tokens, 4, None, None),
            vec![
                14643705804678351452,
                16777012769546811212,
                483935686894639516
            ]
        );
        assert_eq!(xxh3_seeded(b"test data", 1337), 13226331709069118873);
    }
}
