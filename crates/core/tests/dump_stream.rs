//! The recovery body read in chunks (`LocalIndexer::range_reply` / `dump_reply`): the chunks
//! concatenate to exactly what `write_range_result_json` writes in one document, every chunk but the
//! last has exactly the asked size, and a cursor whose index changed fails without panicking.

use dynamo_kv_core::index::DumpStale;
use dynamo_kv_core::local::{write_range_result_json, LocalIndexer, RangeResult, ReplyCursor};
use dynamo_kv_core::wire::{EventData, RouterEvent, StoredBlock};

mod common;
use common::Rng;

/// Thousands of blocks over 3 workers × 3 ranks: chains from the root or from an earlier block of
/// the same key, tokens hashes from a small space so that paths are shared between keys (nodes with
/// several holders) and stored again with other block hashes (one key holding several hashes on a
/// node), and some removals.
fn random_local(r: &mut Rng, events: usize) -> LocalIndexer {
    let mut local = LocalIndexer::new(64);
    let mut known: Vec<Vec<u64>> = vec![Vec::new(); 9];
    for id in 0..events as u64 {
        let key = r.upto(9);
        let (worker_id, dp_rank) = ([7, u64::MAX, 1 << 40][key / 3], (key % 3) as u32);
        let data = if r.chance(10) && !known[key].is_empty() {
            let hashes: Vec<u64> = (0..r.range(1, 4))
                .map(|_| known[key][r.upto(known[key].len())])
                .collect();
            EventData::Removed {
                block_hashes: hashes,
            }
        } else {
            let parent_hash = if known[key].is_empty() || r.chance(30) {
                None
            } else {
                Some(known[key][r.upto(known[key].len())])
            };
            let blocks: Vec<StoredBlock> = (0..r.range(1, 12))
                .map(|_| StoredBlock {
                    block_hash: r.next(),
                    tokens_hash: r.below(3),
                    mm_extra_info: None,
                })
                .collect();
            known[key].extend(blocks.iter().map(|b| b.block_hash));
            EventData::Stored {
                parent_hash,
                blocks,
            }
        };
        local.apply_event(&RouterEvent {
            worker_id,
            event_id: id,
            dp_rank,
            data,
        });
    }
    local
}

fn read_all(local: &LocalIndexer, mut c: ReplyCursor, max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut last = false;
    while let Some(chunk) = local.reply_next(&mut c, max).expect("not stale") {
        assert!(!last, "only the last chunk is short");
        assert!(!chunk.is_empty() && chunk.len() <= max);
        last = chunk.len() < max;
        out.extend_from_slice(&chunk);
    }
    // after the end it stays at the end
    assert_eq!(local.reply_next(&mut c, max), Ok(None));
    out
}

fn whole(r: &RangeResult) -> Vec<u8> {
    let mut out = Vec::new();
    write_range_result_json(&mut out, r);
    out
}

#[test]
fn chunks_concatenate_to_the_one_document() {
    let mut rng = Rng(0x5eed_d0e5);
    for round in 0..4 {
        let local = random_local(&mut rng, 600 + round * 300);
        let all = local.index.dump(None);
        assert!(all.len() > 2000, "{} blocks", all.len());
        let multi = all
            .windows(2)
            .filter(|w| match (&w[0].data, &w[1].data) {
                (
                    EventData::Stored {
                        parent_hash: p0,
                        blocks: b0,
                    },
                    EventData::Stored {
                        parent_hash: p1,
                        blocks: b1,
                    },
                ) => {
                    (w[0].worker_id, w[0].dp_rank) == (w[1].worker_id, w[1].dp_rank)
                        && p0 == p1
                        && b0[0].tokens_hash == b1[0].tokens_hash
                }
                _ => false,
            })
            .count();
        assert!(multi > 0, "some key holds several hashes on one node");
        for max in [1, 7, 100, 4096, 1 << 20] {
            for rank in 0..4u32 {
                let one = whole(&RangeResult::TreeDump(local.index.dump(Some(rank))));
                assert_eq!(read_all(&local, local.dump_reply(Some(rank)), max), one);
                // a range query answered by the dump (no start) and by events, too small, invalid
                for (s, e) in [
                    (None, None),
                    (Some(0), None),
                    (Some(u64::MAX), None),
                    (Some(5), Some(4)),
                ] {
                    let one = whole(&local.events_in_range(rank, s, e));
                    assert_eq!(read_all(&local, local.range_reply(rank, s, e), max), one);
                }
                let newest = 600 + round as u64 * 300 - 1;
                let one = whole(&local.events_in_range(rank, Some(newest - 10), None));
                assert_eq!(
                    read_all(
                        &local,
                        local.range_reply(rank, Some(newest - 10), None),
                        max
                    ),
                    one
                );
            }
            let one = whole(&RangeResult::TreeDump(all.clone()));
            assert_eq!(read_all(&local, local.dump_reply(None), max), one);
        }
    }
}

#[test]
fn an_empty_rank_dumps_as_an_empty_list() {
    let mut local = LocalIndexer::new(4);
    local.register_rank(2);
    assert_eq!(
        read_all(&local, local.range_reply(2, None, None), 3),
        b"{\"TreeDump\":[]}"
    );
    assert_eq!(
        read_all(&local, local.dump_reply(None), 1000),
        b"{\"TreeDump\":[]}"
    );
}

#[test]
fn a_cursor_fails_once_its_index_changed() {
    let mut rng = Rng(42);
    let mut local = random_local(&mut rng, 300);
    let mut c = local.dump_reply(None);
    assert!(local.reply_next(&mut c, 64).unwrap().is_some());
    let mut done = local.dump_reply(Some(0));
    let body = read_all(&local, done.clone(), 1 << 30);
    let mut d = local.dump_reply(Some(0));
    assert_eq!(local.reply_next(&mut d, 1 << 30), Ok(Some(body)));
    local.apply_event(&RouterEvent {
        worker_id: 7,
        event_id: 1000,
        dp_rank: 0,
        data: EventData::Removed {
            block_hashes: vec![1],
        },
    });
    // every later call fails, whatever the size asked
    for max in [0, 1, 64, usize::MAX] {
        assert_eq!(local.reply_next(&mut c, max), Err(DumpStale));
    }
    // a dump fully written before the change has nothing left to read
    assert_eq!(local.reply_next(&mut d, 64), Ok(None));
    // another index's cursor, and one of an index since dropped and rebuilt, are stale too
    let other = random_local(&mut rng, 300);
    assert_eq!(other.reply_next(&mut done, 64), Err(DumpStale));
    local.index.remove_worker(7);
    local.index.remove_worker_dp_rank(1 << 40, 2);
    local.apply_rank_clear(u64::MAX, 1001, 1);
    let mut c = local.dump_reply(None);
    let body = read_all(&local, c.clone(), 10);
    assert_eq!(body, whole(&RangeResult::TreeDump(local.index.dump(None))));
    local.index.remove_worker(12345);
    assert_eq!(local.reply_next(&mut c, 10), Err(DumpStale));
}
