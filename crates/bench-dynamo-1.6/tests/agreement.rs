//! The benchmark's correctness rule on a small trace: this core's RadixIndex answers every query
//! as the reference model does, with one engine hash per token path and with per-worker hashes;
//! Dynamo 1.6.1's RadixTree agrees on the first and, as known, not on the second.

use bench_dynamo_1_6::{
    core_scores, dynamo_scores, event, stored_data, to_dynamo, to_local, RefOutcome, Reference,
    Trace, TraceConfig,
};
use dynamo_kv_core::index::{ApplyOutcome, RadixIndex};
use dynamo_kv_core::wire::EventData;
use dynamo_kv_router::protocols::KvCacheEventError;
use dynamo_kv_router::RadixTree;

fn small(per_worker_hashes: bool) -> Trace {
    Trace::generate(TraceConfig {
        seed: 11,
        workers: 8,
        capacity: 600,
        prompts: 40,
        build_entries: 3_000,
        mixed_blocks: 8_000,
        queries: 400,
        per_worker_hashes,
    })
}

/// Returns how many RadixTree answers differ from the reference, and the ParentBlockNotFound count.
fn run(trace: &Trace) -> (usize, usize) {
    assert!(trace.mixed_removed > 1_000, "the mixed stream evicts");
    let mut reference = Reference::new();
    let mut index = RadixIndex::new();
    let mut tree = RadixTree::new();
    let (mut differ, mut parent_missing) = (0, 0);
    for (events, queries) in [
        (&trace.build, &trace.queries),
        (&trace.mixed, &trace.late_queries),
    ] {
        for ev in events {
            assert_eq!(reference.apply(ev), RefOutcome::Applied);
            assert_eq!(index.apply_event(ev), ApplyOutcome::Applied);
            if let Err(KvCacheEventError::ParentBlockNotFound) = tree.apply_event(to_dynamo(ev)) {
                parent_missing += 1;
            }
        }
        assert_eq!(index.size() as usize, reference.entries());
        let mut nonzero = 0;
        for q in queries {
            let want = reference.scores(q);
            nonzero += want.iter().filter(|s| s.2 >= 8).count();
            assert_eq!(core_scores(index.find_matches_ref(q, false)), want);
            differ += (dynamo_scores(&tree.find_matches(to_local(q), false)) != want) as usize;
        }
        assert!(
            nonzero > queries.len(),
            "queries share long prefixes with the index"
        );
    }
    (differ, parent_missing)
}

#[test]
fn with_one_hash_per_token_path_the_core_and_dynamo_agree_with_the_reference() {
    assert_eq!(run(&small(false)), (0, 0));
}

#[test]
fn with_per_worker_hashes_the_core_agrees_and_dynamo_1_6_1_cuts_stores_short() {
    let (differ, parent_missing) = run(&small(true));
    assert!(
        differ > 0 && parent_missing > 0,
        "{differ} {parent_missing}"
    );
}

#[test]
fn the_reference_scores_consecutive_held_blocks_from_the_first() {
    let stored = |w: u64, parent: Option<u64>, blocks: &[(u64, u64)]| {
        event(w, 0, stored_data(parent, blocks.iter().copied()))
    };
    let removed = |w: u64, hashes: &[u64]| {
        event(
            w,
            0,
            EventData::Removed {
                block_hashes: hashes.to_vec(),
            },
        )
    };
    let mut r = Reference::new();
    let a = r.apply(&stored(1, None, &[(101, 11), (102, 12), (103, 13)]));
    assert_eq!(a, RefOutcome::Applied);
    // worker 2: the same tokens under its own hashes, then a different third block
    r.apply(&stored(2, None, &[(201, 11), (202, 12)]));
    r.apply(&stored(2, Some(202), &[(203, 99)]));
    assert_eq!(
        r.apply(&stored(2, Some(777), &[(204, 13)])),
        RefOutcome::ParentNotFound
    );
    assert_eq!(r.scores(&[11, 12, 13]), vec![(1, 0, 3), (2, 0, 2)]);
    assert_eq!(r.scores(&[12, 13]), vec![]);
    assert_eq!(r.apply(&removed(1, &[102, 5])), RefOutcome::BlockNotFound);
    assert_eq!(r.scores(&[11, 12, 13]), vec![(1, 0, 1), (2, 0, 2)]);
    // a hash stored again elsewhere moves
    r.apply(&stored(2, None, &[(202, 12)]));
    assert_eq!(r.scores(&[11, 12]), vec![(1, 0, 1), (2, 0, 1)]);
    assert_eq!(r.scores(&[12]), vec![(2, 0, 1)]);
    assert_eq!(r.entries(), 2 + 3);
}
