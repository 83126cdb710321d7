//! `RawIngestor.prototype.ingestPacked`: `ingestInto` as a plain Node-API callback.
//!
//! A `#[napi]` method pays for napi-rs's generic borrow tracking on every call (a scope allocated
//! per call, the receiver entered into a process-wide locked map and taken out again), which on
//! the hot path of one call per engine message costs about as much as converting a small batch.
//! This callback converts its five arguments itself and finds its ingestor by a handle (a slot and
//! a generation, from `RawIngestor.handle()`) in a per-thread table, never by unwrapping `this`,
//! so that no receiver, however it was obtained, can make it read memory of another type.
//! A handle that no longer names a live ingestor fails with `Ingestor is closed`.
//!
//! `benchIngestLoop`, on the module's exports, is for bench/run.ts only (it is in no type
//! declaration and no public module): the pure Rust core's loop run inside the Node process.

// napi-rs registers module_exports hooks outside `cfg(test)`: in a test build nothing calls them.
#![cfg_attr(test, allow(dead_code))]

use std::cell::RefCell;
use std::ffi::c_void;
use std::ptr;
use std::rc::{Rc, Weak};

use napi::bindgen_prelude::*;
use napi::sys;
use napi_derive::napi;

use dynamo_kv_core::ingest::OUT_HEADER_BYTES;

use super::{closed, now_arg, report_memory, Shared};

/// Slots of live ingestors: (generation, ingestor). A slot is reused with the next generation.
struct Table {
    slots: Vec<(u32, Weak<RefCell<Shared>>)>,
    free: Vec<u32>,
}

thread_local! {
    static TABLE: RefCell<Table> = const { RefCell::new(Table { slots: Vec::new(), free: Vec::new() }) };
}

/// Slots below 2^21 and generations below 2^32 keep a handle an exact integer in a JS number.
const SLOT_BITS: u32 = 21;

/// Enters an ingestor; returns its handle.
pub(crate) fn register(shared: &Rc<RefCell<Shared>>) -> f64 {
    TABLE.with(|t| {
        let mut t = t.borrow_mut();
        let slot = match t.free.pop() {
            Some(s) => {
                let entry = &mut t.slots[s as usize];
                entry.0 = entry.0.wrapping_add(1);
                entry.1 = Rc::downgrade(shared);
                s
            }
            None => {
                t.slots.push((0, Rc::downgrade(shared)));
                (t.slots.len() - 1) as u32
            }
        };
        handle_of(slot, t.slots[slot as usize].0)
    })
}

/// Frees a handle's slot (its ingestor is being finalized).
pub(crate) fn unregister(handle: f64) {
    TABLE.with(|t| {
        let mut t = t.borrow_mut();
        if let Some(slot) = slot_of(&t, handle) {
            t.slots[slot as usize].1 = Weak::new();
            t.free.push(slot);
        }
    })
}

fn handle_of(slot: u32, generation: u32) -> f64 {
    (generation as f64) * f64::from(1u32 << SLOT_BITS) + slot as f64
}

/// The slot a handle names, when its generation is the slot's current one.
fn slot_of(t: &Table, handle: f64) -> Option<u32> {
    if !(handle >= 0.0 && handle.fract() == 0.0 && handle < 2f64.powi(53)) {
        return None;
    }
    let h = handle as u64;
    let slot = (h & ((1 << SLOT_BITS) - 1)) as u32;
    let generation = (h >> SLOT_BITS) as u32;
    match t.slots.get(slot as usize) {
        Some((g, _)) if *g == generation && (h >> SLOT_BITS) <= u32::MAX as u64 => Some(slot),
        _ => None,
    }
}

fn lookup(handle: f64) -> Option<Rc<RefCell<Shared>>> {
    TABLE.with(|t| {
        let t = t.borrow();
        let slot = slot_of(&t, handle)?;
        t.slots[slot as usize].1.upgrade()
    })
}

fn check(status: sys::napi_status, what: &str) -> Result<()> {
    if status == sys::Status::napi_ok {
        Ok(())
    } else {
        Err(Error::new(
            Status::InvalidArg,
            format!("ingestPacked: {what}"),
        ))
    }
}

unsafe fn number(env: sys::napi_env, v: sys::napi_value, what: &str) -> Result<f64> {
    let mut x = 0f64;
    check(unsafe { sys::napi_get_value_double(env, v, &mut x) }, what)?;
    Ok(x)
}

/// The bytes of a Uint8Array (or Buffer) argument: pointer and length.
unsafe fn bytes(env: sys::napi_env, v: sys::napi_value, what: &str) -> Result<(*mut u8, usize)> {
    let mut kind = 0;
    let mut len = 0usize;
    let mut data: *mut c_void = ptr::null_mut();
    let mut ab = ptr::null_mut();
    let mut off = 0usize;
    check(
        unsafe {
            sys::napi_get_typedarray_info(env, v, &mut kind, &mut len, &mut data, &mut ab, &mut off)
        },
        what,
    )?;
    if kind != sys::TypedarrayType::uint8_array {
        return Err(Error::new(
            Status::InvalidArg,
            format!("ingestPacked: {what}"),
        ));
    }
    Ok((data.cast(), len))
}

/// How far past `offset` the output room is prefetched: a little more than most outputs.
const PREFETCH_BYTES: usize = 4096;

/// Asks the CPU to bring the first bytes of the output room into its cache while the core converts
/// the batch. The public API hands out every output as views into fresh arena memory, which is
/// rarely cached (V8 frees the old arenas only every few tens of megabytes), so without this the
/// copy of each output waits for memory line after line; a hint, with no effect on any value.
#[inline]
fn prefetch(room: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let mut at = 0;
        while at < len.min(PREFETCH_BYTES) {
            // SAFETY: a prefetch never faults and reads nothing; `room + at` stays within the output.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(room.add(at).cast()) };
            at += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (room, len);
}

/// `ingestPacked(handle, payload, nowMs, out, offset)`: what `ingestInto(payload, nowMs, out,
/// offset)` does on the ingestor `handle` names.
unsafe fn ingest_packed(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> Result<sys::napi_value> {
    let mut argc = 5usize;
    let mut argv = [ptr::null_mut(); 5];
    check(
        unsafe {
            sys::napi_get_cb_info(
                env,
                info,
                &mut argc,
                argv.as_mut_ptr(),
                ptr::null_mut(),
                ptr::null_mut(),
            )
        },
        "bad call",
    )?;
    if argc < 5 {
        return Err(Error::new(
            Status::InvalidArg,
            "ingestPacked: takes (handle, payload, nowMs, out, offset)".to_owned(),
        ));
    }
    let handle = unsafe { number(env, argv[0], "handle must be a number") }?;
    let (payload_ptr, payload_len) =
        unsafe { bytes(env, argv[1], "payload must be a Uint8Array") }?;
    let now_ms = unsafe { number(env, argv[2], "nowMs must be a number") }?;
    let (out_ptr, out_len) = unsafe { bytes(env, argv[3], "out must be a Uint8Array") }?;
    let offset = unsafe { number(env, argv[4], "offset must be a number") }?;
    let shared = lookup(handle).ok_or_else(|| closed("Ingestor"))?;
    let mut shared = shared.borrow_mut();
    let (ing, memory) = shared.get("Ingestor")?;
    let payload: &[u8] = if payload_len == 0 {
        &[]
    } else {
        // SAFETY: the typed array's bytes, alive while JavaScript is blocked in this call; only
        // read, and no longer used once the output is written below (`out` may be the same memory).
        unsafe { std::slice::from_raw_parts(payload_ptr, payload_len) }
    };
    if offset >= 0.0 && offset < out_len as f64 {
        // SAFETY: `offset` is within the output's bytes (checked just above).
        let room = unsafe { out_ptr.add(offset as usize) };
        prefetch(room, out_len - offset as usize);
    }
    let packed = ing.ingest_packed(payload, now_arg(now_ms));
    let fits = offset >= 0.0
        && offset.fract() == 0.0
        && offset <= out_len as f64
        && packed.len() <= out_len - offset as usize;
    let mut result = ptr::null_mut();
    if fits {
        // SAFETY: in bounds (checked above); `packed` is the ingestor's own buffer, never JS
        // memory, and `copy` allows any overlap with the payload.
        unsafe { ptr::copy(packed.as_ptr(), out_ptr.add(offset as usize), packed.len()) };
        check(
            unsafe { sys::napi_create_uint32(env, packed.len() as u32, &mut result) },
            "cannot create the result",
        )?;
    } else {
        let mut data = ptr::null_mut();
        check(
            unsafe {
                sys::napi_create_buffer_copy(
                    env,
                    packed.len(),
                    packed.as_ptr().cast(),
                    &mut data,
                    &mut result,
                )
            },
            "cannot allocate the output",
        )?;
    }
    let bytes = ing.approx_bytes();
    report_memory(&Env::from_raw(env), memory, bytes);
    Ok(result)
}

unsafe extern "C" fn ingest_packed_cb(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> sys::napi_value {
    let r = std::panic::catch_unwind(|| unsafe { ingest_packed(env, info) })
        .map_err(|_| Error::new(Status::GenericFailure, "ingestPacked panicked".to_owned()))
        .and_then(|r| r);
    match r {
        Ok(v) => v,
        Err(e) => {
            unsafe { JsError::from(e).throw_into(env) };
            ptr::null_mut()
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Reads a packed output as bench/run.ts `publishLike` reads a result (and the pure Rust bench
/// example's `consume`): the payloads' lengths and count, the dp rank, whether there is a first
/// event id, the number of warnings. Adds them to `tally`.
fn consume(out: &[u8], tally: &mut [f64; 5]) -> Option<()> {
    let n = u32_at(out, 0)? as usize;
    let flags = u32_at(out, 8)?;
    let lens_at = out.len().checked_sub(4 * n)?;
    let mut payloads = 0usize;
    for i in 0..n {
        payloads += u32_at(out, lens_at + 4 * i)? as usize;
    }
    if n > 0 {
        tally[0] += payloads as f64;
        tally[1] += n as f64;
        tally[3] += f64::from(u32_at(out, 4)?);
        tally[2] += f64::from(u8::from(flags & 1 == 0));
    }
    if flags & 2 != 0 {
        let mut at = OUT_HEADER_BYTES + payloads;
        let end = at + u32_at(out, 12)? as usize;
        while at < end {
            tally[4] += 1.0;
            at += 4 + u32_at(out, at)? as usize;
        }
    }
    Some(())
}

/// `benchIngestLoop(handle, batches, nowMs, passes, tally)`: the pure Rust side of the bench run
/// inside this process: `passes` times over `batches` (u32-LE length-prefixed engine batches, the
/// input of crates/core/examples/bench_ingest.rs), `Ingestor::ingest_packed` on the ingestor
/// `handle` names, each output read as the bench's publisher-like consumer reads a result; what it
/// read is added to `tally` (a Float64Array of 5: payload bytes, payloads, outputs without a first
/// event id, dp ranks, warnings). Stops at a length prefix that runs past the end.
unsafe fn bench_ingest_loop(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> Result<sys::napi_value> {
    let mut argc = 5usize;
    let mut argv = [ptr::null_mut(); 5];
    check(
        unsafe {
            sys::napi_get_cb_info(
                env,
                info,
                &mut argc,
                argv.as_mut_ptr(),
                ptr::null_mut(),
                ptr::null_mut(),
            )
        },
        "bad call",
    )?;
    if argc < 5 {
        return Err(Error::new(
            Status::InvalidArg,
            "benchIngestLoop: takes (handle, batches, nowMs, passes, tally)".to_owned(),
        ));
    }
    let handle = unsafe { number(env, argv[0], "handle must be a number") }?;
    let (data_ptr, data_len) = unsafe { bytes(env, argv[1], "batches must be a Uint8Array") }?;
    let now_ms = unsafe { number(env, argv[2], "nowMs must be a number") }?;
    let passes = unsafe { number(env, argv[3], "passes must be a number") }?;
    if !(0.0..=1e6).contains(&passes) {
        return Err(Error::new(
            Status::InvalidArg,
            "benchIngestLoop: passes must be in 0..1e6".to_owned(),
        ));
    }
    let mut kind = 0;
    let mut len = 0usize;
    let mut tally_ptr: *mut c_void = ptr::null_mut();
    let mut ab = ptr::null_mut();
    let mut off = 0usize;
    check(
        unsafe {
            sys::napi_get_typedarray_info(
                env,
                argv[4],
                &mut kind,
                &mut len,
                &mut tally_ptr,
                &mut ab,
                &mut off,
            )
        },
        "tally must be a Float64Array of 5",
    )?;
    if kind != sys::TypedarrayType::float64_array || len < 5 {
        return Err(Error::new(
            Status::InvalidArg,
            "benchIngestLoop: tally must be a Float64Array of 5".to_owned(),
        ));
    }
    let shared = lookup(handle).ok_or_else(|| closed("Ingestor"))?;
    let mut shared = shared.borrow_mut();
    let (ing, _) = shared.get("Ingestor")?;
    let data: &[u8] = if data_len == 0 {
        &[]
    } else {
        // SAFETY: the typed array's bytes, alive and unchanged while JavaScript is blocked in this
        // call; only read.
        unsafe { std::slice::from_raw_parts(data_ptr, data_len) }
    };
    let now = now_arg(now_ms);
    let mut tally = [0f64; 5];
    let mut pass = 0f64;
    while pass < passes {
        let mut at = 0;
        while let Some(n) = u32_at(data, at) {
            let Some(batch) = data.get(at + 4..at + 4 + n as usize) else {
                break;
            };
            let _ = consume(ing.ingest_packed(batch, now), &mut tally);
            at += 4 + n as usize;
        }
        pass += 1.0;
    }
    // SAFETY: a Float64Array of at least 5 elements (checked above); it may not be 8-byte aligned
    // in memory we did not allocate, hence unaligned reads and writes.
    let t = tally_ptr.cast::<f64>();
    for (i, x) in tally.iter().enumerate() {
        unsafe { t.add(i).write_unaligned(t.add(i).read_unaligned() + x) };
    }
    let mut result = ptr::null_mut();
    check(
        unsafe { sys::napi_get_undefined(env, &mut result) },
        "cannot create the result",
    )?;
    Ok(result)
}

unsafe extern "C" fn bench_ingest_loop_cb(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> sys::napi_value {
    let r = std::panic::catch_unwind(|| unsafe { bench_ingest_loop(env, info) })
        .map_err(|_| {
            Error::new(
                Status::GenericFailure,
                "benchIngestLoop panicked".to_owned(),
            )
        })
        .and_then(|r| r);
    match r {
        Ok(v) => v,
        Err(e) => {
            unsafe { JsError::from(e).throw_into(env) };
            ptr::null_mut()
        }
    }
}

/// Puts `ingestPacked` on `RawIngestor.prototype` once the classes are registered, and the
/// bench-only `benchIngestLoop` on the exports.
#[napi(module_exports)]
pub fn install_ingest_packed(exports: Object, env: Env) -> Result<()> {
    let env = env.raw();
    let mut ctor = ptr::null_mut();
    let mut proto = ptr::null_mut();
    let mut f = ptr::null_mut();
    unsafe {
        check(
            sys::napi_get_named_property(env, exports.raw(), c"RawIngestor".as_ptr(), &mut ctor),
            "no RawIngestor class",
        )?;
        check(
            sys::napi_get_named_property(env, ctor, c"prototype".as_ptr(), &mut proto),
            "no RawIngestor prototype",
        )?;
        check(
            sys::napi_create_function(
                env,
                c"ingestPacked".as_ptr(),
                "ingestPacked".len() as isize,
                Some(ingest_packed_cb),
                ptr::null_mut(),
                &mut f,
            ),
            "cannot create ingestPacked",
        )?;
        check(
            sys::napi_set_named_property(env, proto, c"ingestPacked".as_ptr(), f),
            "cannot install ingestPacked",
        )?;
        check(
            sys::napi_create_function(
                env,
                c"benchIngestLoop".as_ptr(),
                "benchIngestLoop".len() as isize,
                Some(bench_ingest_loop_cb),
                ptr::null_mut(),
                &mut f,
            ),
            "cannot create benchIngestLoop",
        )?;
        check(
            sys::napi_set_named_property(env, exports.raw(), c"benchIngestLoop".as_ptr(), f),
            "cannot install benchIngestLoop",
        )
    }
}
