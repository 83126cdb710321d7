//! The worker-side local indexer (SPEC 6): a radix index plus, per dp rank, a ring buffer of the last
//! N events applied, so that a router that missed some can ask for a range (SPEC 7).

use std::collections::{HashMap, VecDeque};

use crate::index::{ApplyOutcome, DumpCursor, DumpStale, IndexAccess, RadixIndex};
use crate::wire::{
    write_router_event_json, write_u64_dec, DataRef, EventData, RouterEvent, StoredBlock,
};

pub const DEFAULT_BUFFER_SIZE: usize = 1024;

/// The answer to a range query (Dynamo's WorkerKvQueryResponse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeResult {
    Events(Vec<RouterEvent>),
    TreeDump(Vec<RouterEvent>),
    TooNew {
        requested_start: u64,
        requested_end: u64,
        newest_available: u64,
    },
    InvalidRange {
        start_id: u64,
        end_id: u64,
    },
    Error(String),
}

#[derive(Debug)]
pub struct LocalIndexer {
    pub index: RadixIndex,
    capacity: usize,
    rings: HashMap<u32, VecDeque<RouterEvent>>,
    /// Heap bytes of the buffered events' own vectors, kept as they come and go (approx_bytes).
    ring_bytes: usize,
}

/// The heap bytes an event's vectors hold (the event itself is counted with its ring's slot).
fn event_heap_bytes(ev: &RouterEvent) -> usize {
    match &ev.data {
        EventData::Stored { blocks, .. } => {
            blocks.capacity() * std::mem::size_of::<StoredBlock>()
                + blocks
                    .iter()
                    .filter_map(|b| b.mm_extra_info.as_ref())
                    .map(|m| m.mm_objects.capacity() * 64)
                    .sum::<usize>()
        }
        EventData::Removed { block_hashes } => block_hashes.capacity() * 8,
        EventData::Cleared => 0,
    }
}

impl LocalIndexer {
    /// `capacity` (events kept per dp rank) is at least 1.
    pub fn new(capacity: usize) -> Self {
        LocalIndexer {
            index: RadixIndex::new(),
            capacity: capacity.max(1),
            rings: HashMap::new(),
            ring_bytes: 0,
        }
    }

    /// Makes a dp rank known (it then answers range queries, with an empty dump at first).
    pub fn register_rank(&mut self, dp_rank: u32) {
        self.rings.entry(dp_rank).or_default();
    }

    pub fn apply_event(&mut self, ev: &RouterEvent) -> ApplyOutcome {
        self.buffer(ev.clone());
        self.index.apply_event(ev)
    }

    /// Applies and buffers an event given by parts (the ingest path).
    pub fn apply(
        &mut self,
        worker_id: u64,
        event_id: u64,
        dp_rank: u32,
        data: DataRef,
    ) -> ApplyOutcome {
        self.buffer(RouterEvent {
            worker_id,
            event_id,
            dp_rank,
            data: data.to_owned(),
        });
        self.index.apply(worker_id, event_id, dp_rank, data)
    }

    /// Applies and buffers a Dynamo 1.4+ `cleared`: only `dp_rank` of the worker loses its blocks.
    pub fn apply_rank_clear(
        &mut self,
        worker_id: u64,
        event_id: u64,
        dp_rank: u32,
    ) -> ApplyOutcome {
        self.buffer(RouterEvent {
            worker_id,
            event_id,
            dp_rank,
            data: crate::wire::EventData::Cleared,
        });
        self.index.clear_rank(worker_id, event_id, dp_rank)
    }

    fn buffer(&mut self, ev: RouterEvent) {
        let ring = self.rings.entry(ev.dp_rank).or_default();
        if ring.len() == self.capacity {
            if let Some(old) = ring.pop_front() {
                self.ring_bytes -= event_heap_bytes(&old);
            }
        }
        self.ring_bytes += event_heap_bytes(&ev);
        ring.push_back(ev);
    }

    /// A cheap estimate of the heap bytes held (index and buffered events), O(ranks + workers):
    /// what the binding reports to the JavaScript GC.
    pub fn approx_bytes(&self) -> usize {
        let slots: usize = self.rings.values().map(|r| r.capacity()).sum();
        self.index.approx_bytes()
            + self.ring_bytes
            + slots * std::mem::size_of::<RouterEvent>()
            + self.rings.capacity() * 48
    }

    /// SPEC 6 `eventsInRange`, checks in order.
    pub fn events_in_range(
        &self,
        dp_rank: u32,
        start: Option<u64>,
        end: Option<u64>,
    ) -> RangeResult {
        self.range_answer(dp_rank, start, end)
            .unwrap_or_else(|| RangeResult::TreeDump(self.index.dump(Some(dp_rank))))
    }

    /// `events_in_range` without building a dump: `None` where the answer is the rank's dump.
    fn range_answer(
        &self,
        dp_rank: u32,
        start: Option<u64>,
        end: Option<u64>,
    ) -> Option<RangeResult> {
        let Some(ring) = self.rings.get(&dp_rank) else {
            return Some(RangeResult::Error(format!(
                "no events for dp rank {dp_rank}"
            )));
        };
        if let (Some(s), Some(e)) = (start, end) {
            if e < s {
                return Some(RangeResult::InvalidRange {
                    start_id: s,
                    end_id: e,
                });
            }
        }
        let start = start?;
        if ring.is_empty() {
            return None;
        }
        let newest = ring.iter().map(|e| e.event_id).max().unwrap_or(0);
        let oldest = ring.iter().map(|e| e.event_id).min().unwrap_or(0);
        let end = end.unwrap_or(newest);
        if start > newest {
            return Some(RangeResult::TooNew {
                requested_start: start,
                requested_end: end,
                newest_available: newest,
            });
        }
        if start < oldest {
            return None;
        }
        let last = end.min(newest);
        Some(RangeResult::Events(
            ring.iter()
                .filter(|e| e.event_id >= start && e.event_id <= last)
                .cloned()
                .collect(),
        ))
    }

    /// A cursor over the recovery response body of `events_in_range(dp_rank, start, end)` (the
    /// bytes `write_range_result_json` writes), read in chunks by `reply_next`. A dump is written
    /// from the index as the chunks are asked for; any other answer (bounded by the ring buffer) is
    /// written at once.
    pub fn range_reply(&self, dp_rank: u32, start: Option<u64>, end: Option<u64>) -> ReplyCursor {
        match self.range_answer(dp_rank, start, end) {
            Some(r) => {
                let mut buf = Vec::new();
                write_range_result_json(&mut buf, &r);
                ReplyCursor {
                    dump: None,
                    buf,
                    at: 0,
                }
            }
            None => self.dump_reply(Some(dp_rank)),
        }
    }

    /// A cursor over the `{"TreeDump":[...]}` body of the dump of one dp rank (or all).
    pub fn dump_reply(&self, only_rank: Option<u32>) -> ReplyCursor {
        ReplyCursor {
            dump: Some((self.index.dump_cursor(only_rank), false)),
            buf: b"{\"TreeDump\":[".to_vec(),
            at: 0,
        }
    }

    /// The next `max` bytes (at least 1) of the cursor's body: every chunk but the last has exactly
    /// `max` bytes (cut anywhere, even inside an event), `Ok(None)` after the last.
    /// `Err(DumpStale)` when the body is a dump not yet fully written and the index changed since
    /// the cursor was opened (the cursor then stays stale).
    pub fn reply_next(
        &self,
        c: &mut ReplyCursor,
        max: usize,
    ) -> Result<Option<Vec<u8>>, DumpStale> {
        let max = max.max(1);
        if let Some((cursor, any)) = c.dump.as_mut() {
            if !self.index.dump_valid(cursor) {
                return Err(DumpStale);
            }
            while c.buf.len() - c.at < max {
                match self.index.dump_next(cursor)? {
                    Some(ev) => {
                        if *any {
                            c.buf.push(b',');
                        }
                        *any = true;
                        write_router_event_json(&mut c.buf, &ev);
                    }
                    None => {
                        c.buf.extend_from_slice(b"]}");
                        c.dump = None;
                        break;
                    }
                }
            }
        }
        if c.at >= c.buf.len() {
            c.buf = Vec::new();
            c.at = 0;
            return Ok(None);
        }
        let n = max.min(c.buf.len() - c.at);
        let chunk = c.buf[c.at..c.at + n].to_vec();
        c.at += n;
        // keep the buffer to what is not yet returned: at most `max` plus one event while dumping
        if c.dump.is_some() {
            c.buf.drain(..c.at);
            c.at = 0;
        }
        Ok(Some(chunk))
    }
}

/// A recovery response body being read in chunks (`LocalIndexer::range_reply`, `dump_reply`).
#[derive(Debug, Clone)]
pub struct ReplyCursor {
    /// while a dump is being written: its cursor, and whether an event was written yet
    dump: Option<(DumpCursor, bool)>,
    /// bytes written and not yet returned start at `at`
    buf: Vec<u8>,
    at: usize,
}

/// The JSON body of a range answer, as Dynamo's serde_json writes WorkerKvQueryResponse (exact u64).
pub fn write_range_result_json(out: &mut Vec<u8>, r: &RangeResult) {
    let events = |out: &mut Vec<u8>, tag: &[u8], evs: &[RouterEvent]| {
        out.extend_from_slice(tag);
        out.push(b'[');
        for (i, e) in evs.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_router_event_json(out, e);
        }
        out.extend_from_slice(b"]}");
    };
    match r {
        RangeResult::Events(evs) => events(out, b"{\"Events\":", evs),
        RangeResult::TreeDump(evs) => events(out, b"{\"TreeDump\":", evs),
        RangeResult::TooNew {
            requested_start,
            requested_end,
            newest_available,
        } => {
            out.extend_from_slice(b"{\"TooNew\":{\"requested_start\":");
            write_u64_dec(out, *requested_start);
            out.extend_from_slice(b",\"requested_end\":");
            write_u64_dec(out, *requested_end);
            out.extend_from_slice(b",\"newest_available\":");
            write_u64_dec(out, *newest_available);
            out.extend_from_slice(b"}}");
        }
        RangeResult::InvalidRange { start_id, end_id } => {
            out.extend_from_slice(b"{\"InvalidRange\":{\"start_id\":");
            write_u64_dec(out, *start_id);
            out.extend_from_slice(b",\"end_id\":");
            write_u64_dec(out, *end_id);
            out.extend_from_slice(b"}}");
        }
        RangeResult::Error(msg) => {
            out.extend_from_slice(b"{\"Error\":");
            write_json_string(out, msg);
            out.push(b'}');
        }
    }
}

/// A JSON string literal as serde_json escapes it.
fn write_json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{08}' => out.extend_from_slice(b"\\b"),
            '\u{0c}' => out.extend_from_slice(b"\\f"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

impl IndexAccess for LocalIndexer {
    fn index(&self) -> &RadixIndex {
        &self.index
    }
    fn index_mut(&mut self) -> &mut RadixIndex {
        &mut self.index
    }
    /// Applies and buffers.
    fn apply_parts(
        &mut self,
        worker_id: u64,
        event_id: u64,
        dp_rank: u32,
        data: DataRef,
    ) -> ApplyOutcome {
        self.apply(worker_id, event_id, dp_rank, data)
    }
    fn clear_rank_parts(&mut self, worker_id: u64, event_id: u64, dp_rank: u32) -> ApplyOutcome {
        self.apply_rank_clear(worker_id, event_id, dp_rank)
    }
}
