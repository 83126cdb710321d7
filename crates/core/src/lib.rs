//! dynamo-kv core: pure Rust, no I/O, no async. Engine KV-event decoding (SPEC 2), conversion into
//! Dynamo router events (SPEC 3), block hashing (SPEC 4), router-wire encodings (SPEC 5), the
//! per-publisher ingest state, and the radix index (SPEC 6) with its two-copy wrapper whose readers on
//! other threads never wait for the writer (`index_shared`). Nothing here panics on input: every
//! failure is a value.

#![deny(clippy::all)]

pub mod convert;
pub mod discovery;
pub mod engine;
pub mod hash;
pub mod index;
pub mod index_shared;
pub mod ingest;
pub mod json;
pub mod local;
pub mod msgpack;
pub mod query;
pub mod select;
pub mod wire;

pub use convert::{decode_engine_batch, Converted, DecodedBatch, Reason, Store};
pub use hash::{compute_block_hashes, compute_block_hashes_with, BlockHashOptions};
pub use index::{ApplyOutcome, IndexAccess, Match, MatchScratch, RadixIndex};
pub use index_shared::{PublishPolicy, SharedReader, SharedWriter};
pub use ingest::{unpack, Ingestor, IngestorConfig, Mode, Unpacked, COUNTER_NAMES};
pub use local::{LocalIndexer, RangeResult};
pub use wire::{BlockExtraInfo, EventData, MmObject, RouterEvent, StoredBlock};
