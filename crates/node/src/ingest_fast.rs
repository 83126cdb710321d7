//! `RawIngestor.prototype.ingestPacked`: `ingestInto` as a plain Node-API callback (see `plain`),
//! finding its ingestor by a handle from `RawIngestor.handle()`. A handle that no longer names a live
//! ingestor fails with `Ingestor is closed`. Its optional sixth argument marks `out` as an arena of
//! the public API (see [`keep_highest_arena`]).
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
use crate::plain::{self, Handles};

/// A status of the exports hook as a result (its errors name `ingestPacked`).
fn check(status: sys::napi_status, what: &str) -> Result<()> {
    plain::check(status, "ingestPacked", what)
}

thread_local! {
    /// The live ingestors.
    static TABLE: RefCell<Handles<Weak<RefCell<Shared>>>> = const { RefCell::new(Handles::new()) };
}

/// Enters an ingestor; returns its handle.
pub(crate) fn register(shared: &Rc<RefCell<Shared>>) -> f64 {
    TABLE.with(|t| t.borrow_mut().register(Rc::downgrade(shared)))
}

/// Frees a handle's slot (its ingestor is being finalized).
pub(crate) fn unregister(handle: f64) {
    TABLE.with(|t| t.borrow_mut().unregister(handle))
}

fn lookup(handle: f64) -> Option<Rc<RefCell<Shared>>> {
    TABLE.with(|t| t.borrow().get(handle)?.upgrade())
}

/// The bytes of a Uint8Array (or Buffer) argument of the callback `name`: pointer and length.
unsafe fn bytes(
    env: sys::napi_env,
    v: sys::napi_value,
    name: &str,
    what: &str,
) -> Result<(*mut u8, usize)> {
    let (data, len) =
        unsafe { plain::typed(env, v, sys::TypedarrayType::uint8_array, name, what) }?;
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

/// The arena at the highest address seen in an environment, and the reference that keeps it alive.
struct KeptArena {
    env: sys::napi_env,
    at: usize,
    reference: sys::napi_ref,
}

thread_local! {
    /// The kept arena of each environment on this thread (one, unless an embedder runs several).
    static KEPT: RefCell<Vec<KeptArena>> = const { RefCell::new(Vec::new()) };
}

/// Keeps `arena` referenced while it is the arena at the highest address seen.
///
/// The public API writes every output into fresh arenas that V8 frees in bulk after a young
/// collection (tens of megabytes at a time). glibc's malloc returns the part of its heap above the
/// highest chunk in use to the system once that part exceeds 128 KiB, so the arenas freed at the top
/// went back to the system, and the next ones faulted every page in again: 0.2-0.4 page faults per
/// engine batch, at 4 µs each on a virtual machine. With the highest arena kept, the freed ones lie
/// below a chunk in use: the allocator reuses them for the next arenas instead. Costs one arena
/// (64 KiB) per environment; changes no byte of any output, and on any other allocator nothing but
/// that arena being kept.
///
/// # Safety
///
/// `env` and `arena` are the running call's.
unsafe fn keep_highest_arena(env: sys::napi_env, arena: sys::napi_value, at: usize) {
    KEPT.with(|kept| {
        let mut kept = kept.borrow_mut();
        let slot = kept.iter().position(|k| k.env == env);
        if slot.is_some_and(|i| at <= kept[i].at) {
            return;
        }
        let mut reference = ptr::null_mut();
        // SAFETY: a value of the running call; a failure leaves the kept arena as it was.
        if unsafe { sys::napi_create_reference(env, arena, 1, &mut reference) }
            != sys::Status::napi_ok
        {
            return;
        }
        let now = KeptArena { env, at, reference };
        match slot {
            Some(i) => {
                // SAFETY: a reference this environment created (the entry of a torn-down one is
                // removed by `forget_kept_arena`).
                unsafe { sys::napi_delete_reference(env, kept[i].reference) };
                kept[i] = now;
            }
            None => kept.push(now),
        }
    });
}

/// An environment's cleanup hook: its references are freed by Node-API itself, so its kept arena
/// is only forgotten, never released through a torn-down environment.
unsafe extern "C" fn forget_kept_arena(env: *mut c_void) {
    KEPT.with(|kept| kept.borrow_mut().retain(|k| k.env.cast::<c_void>() != env));
}

/// `ingestPacked(handle, payload, nowMs, out, offset[, arena])`: what `ingestInto(payload, nowMs,
/// out, offset)` does on the ingestor `handle` names; `arena` (a boolean; undefined or absent is
/// false) marks `out` as one of the public API's arenas, of which the highest is kept (see
/// [`keep_highest_arena`]).
unsafe fn ingest_packed(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> Result<sys::napi_value> {
    const NAME: &str = "ingestPacked";
    let [handle, payload, now_ms, out, offset, arena] = unsafe {
        plain::args_up_to::<6>(
            env,
            info,
            5,
            NAME,
            "(handle, payload, nowMs, out, offset[, arena])",
        )
    }?;
    let handle = unsafe { plain::number(env, handle, NAME, "handle must be a number") }?;
    let (payload_ptr, payload_len) =
        unsafe { bytes(env, payload, NAME, "payload must be a Uint8Array") }?;
    let now_ms = unsafe { plain::number(env, now_ms, NAME, "nowMs must be a number") }?;
    let (out_ptr, out_len) = unsafe { bytes(env, out, NAME, "out must be a Uint8Array") }?;
    let offset = unsafe { plain::number(env, offset, NAME, "offset must be a number") }?;
    let arena =
        unsafe { plain::boolean(env, arena, Some(false), NAME, "arena must be a boolean") }?;
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
    if arena {
        unsafe { keep_highest_arena(env, out, out_ptr as usize) };
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
        plain::check(
            unsafe { sys::napi_create_uint32(env, packed.len() as u32, &mut result) },
            "ingestPacked",
            "cannot create the result",
        )?;
    } else {
        let mut data = ptr::null_mut();
        plain::check(
            unsafe {
                sys::napi_create_buffer_copy(
                    env,
                    packed.len(),
                    packed.as_ptr().cast(),
                    &mut data,
                    &mut result,
                )
            },
            "ingestPacked",
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
    unsafe { plain::run(env, "ingestPacked", || ingest_packed(env, info)) }
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
    const NAME: &str = "benchIngestLoop";
    let [handle, batches, now_ms, passes, tally] =
        unsafe { plain::args::<5>(env, info, NAME, "(handle, batches, nowMs, passes, tally)") }?;
    let handle = unsafe { plain::number(env, handle, NAME, "handle must be a number") }?;
    let (data_ptr, data_len) =
        unsafe { bytes(env, batches, NAME, "batches must be a Uint8Array") }?;
    let now_ms = unsafe { plain::number(env, now_ms, NAME, "nowMs must be a number") }?;
    let passes = unsafe { plain::number(env, passes, NAME, "passes must be a number") }?;
    if !(0.0..=1e6).contains(&passes) {
        return Err(plain::invalid(NAME, "passes must be in 0..1e6"));
    }
    let (tally_ptr, len) = unsafe {
        plain::typed(
            env,
            tally,
            sys::TypedarrayType::float64_array,
            NAME,
            "tally must be a Float64Array of 5",
        )
    }?;
    if len < 5 {
        return Err(plain::invalid(NAME, "tally must be a Float64Array of 5"));
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
    plain::check(
        unsafe { sys::napi_get_undefined(env, &mut result) },
        NAME,
        "cannot create the result",
    )?;
    Ok(result)
}

unsafe extern "C" fn bench_ingest_loop_cb(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> sys::napi_value {
    unsafe { plain::run(env, "benchIngestLoop", || bench_ingest_loop(env, info)) }
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
        )?;
        check(
            sys::napi_add_env_cleanup_hook(env, Some(forget_kept_arena), env.cast()),
            "cannot add the kept arena's cleanup hook",
        )
    }
}
