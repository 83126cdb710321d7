//! Dynamo's LocalBlockHash (SPEC 4): XXH3-64 over a block's tokens as u32 little-endian, followed by
//! the block's multimodal object hashes sorted ascending as u64 little-endian. The seed carries the
//! LoRA adapter and the cache salt; Eagle hashes overlapping windows of `block_size + 1` tokens.

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

/// The seed for a LoRA adapter and a cache salt (Dynamo 1.4+):
/// 1337 + xxh3_64(lora, 0) + xxh3_64(salt, 1), wrapping; `""` (or none) leaves a term out, so with
/// no salt this is `lora_seed`.
pub fn salt_seed(lora_name: Option<&str>, cache_salt: Option<&str>) -> u64 {
    let seed = lora_seed(lora_name);
    match cache_salt {
        Some(salt) if !salt.is_empty() => seed.wrapping_add(xxh3_64_with_seed(salt.as_bytes(), 1)),
        _ => seed,
    }
}

/// How `compute_block_hashes_with` hashes: every field's default is Dynamo 1.0's plain text hash.
#[derive(Debug, Default, Clone, Copy)]
pub struct BlockHashOptions<'a> {
    pub lora_name: Option<&'a str>,
    /// Dynamo 1.4+'s cache salt (cache namespace); `""` is none.
    pub cache_salt: Option<&'a str>,
    /// `block_mm_infos[i]`, when present, is block i's multimodal info.
    pub block_mm_infos: Option<&'a [Option<BlockExtraInfo>]>,
    /// Eagle: block i hashes tokens `[i * block_size, (i + 1) * block_size + 1)`, so each block
    /// needs one token of the next.
    pub eagle: bool,
}

/// How many blocks `tokens_len` tokens make (a trailing partial block is dropped; an Eagle block
/// needs `block_size + 1` tokens). `block_size` must be > 0.
pub fn block_count(tokens_len: usize, block_size: usize, eagle: bool) -> usize {
    if eagle {
        tokens_len.saturating_sub(1) / block_size
    } else {
        tokens_len / block_size
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
    compute_block_hashes_with(
        tokens,
        block_size,
        &BlockHashOptions {
            lora_name,
            block_mm_infos: mm,
            ..BlockHashOptions::default()
        },
    )
}

/// The hash of every complete block of `tokens` under `opts`; empty when `block_size` is 0.
pub fn compute_block_hashes_with(
    tokens: &[u32],
    block_size: usize,
    opts: &BlockHashOptions,
) -> Vec<u64> {
    if block_size == 0 {
        return Vec::new();
    }
    let n = block_count(tokens.len(), block_size, opts.eagle);
    if n == 0 {
        return Vec::new();
    }
    let seed = salt_seed(opts.lora_name, opts.cache_salt);
    let window = if opts.eagle {
        block_size + 1
    } else {
        block_size
    };
    let bytes = tokens_le(&tokens[..(n - 1) * block_size + window]);
    let mut scratch = Vec::new();
    (0..n)
        .map(|i| {
            let info = opts
                .block_mm_infos
                .and_then(|m| m.get(i))
                .and_then(|o| o.as_ref());
            let start = i * block_size * 4;
            block_hash(&bytes[start..start + window * 4], info, seed, &mut scratch)
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
