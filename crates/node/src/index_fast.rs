//! `findMatchesPacked` (from `findMatchesPackedFunction()`): `findMatches` as a plain Node-API callback.
//!
//! A `#[napi]` method pays for napi-rs's generic borrow tracking on every call (a scope allocated
//! per call, the receiver checked against a class registry and entered into a locked map), about
//! 0.25 µs: a fifth of a whole 64-block lookup. This callback converts its five arguments itself and
//! finds its index by a handle (a slot and a generation, from `RawRadixIndex.handle()`) in a
//! per-thread table, never by unwrapping `this`, so that no receiver, however it was obtained, can
//! make it read memory of another type. A handle that no longer names a live index fails with
//! `RadixIndex is closed`.

// napi-rs registers its exports outside `cfg(test)`: in a test build nothing calls them.
#![cfg_attr(test, allow(dead_code))]

use std::cell::RefCell;
use std::ffi::c_void;
use std::ptr;

use dynamo_kv_core::index::{write_matches, RadixIndex};
use napi::bindgen_prelude::*;
use napi::sys;
use napi_derive::napi;

use super::closed;

/// Slots of registered indexes: (generation, the index inside its `RawRadixIndex`, or null when
/// the slot is free). A slot is reused with the next generation.
struct Table {
    slots: Vec<(u32, *mut RadixIndex)>,
    free: Vec<u32>,
}

thread_local! {
    static TABLE: RefCell<Table> = const { RefCell::new(Table { slots: Vec::new(), free: Vec::new() }) };
}

/// Slots below 2^21 and generations below 2^32 keep a handle an exact integer in a JS number.
const SLOT_BITS: u32 = 21;

/// Enters an index; returns its handle.
///
/// # Safety
///
/// `index` must stay valid, at the same address, until `unregister` is called with the handle:
/// it is the `inner` field of a `RawRadixIndex` owned by its JavaScript object (napi-rs boxes it
/// once and frees it only in its finalizer, which unregisters first).
pub(crate) unsafe fn register(index: *mut RadixIndex) -> f64 {
    TABLE.with(|t| {
        let mut t = t.borrow_mut();
        let slot = match t.free.pop() {
            Some(s) => {
                let entry = &mut t.slots[s as usize];
                entry.0 = entry.0.wrapping_add(1);
                entry.1 = index;
                s
            }
            None => {
                t.slots.push((0, index));
                (t.slots.len() - 1) as u32
            }
        };
        handle_of(slot, t.slots[slot as usize].0)
    })
}

/// Frees a handle's slot (its index is being finalized).
pub(crate) fn unregister(handle: f64) {
    TABLE.with(|t| {
        let mut t = t.borrow_mut();
        if let Some(slot) = slot_of(&t, handle) {
            t.slots[slot as usize].1 = ptr::null_mut();
            t.free.push(slot);
        }
    })
}

fn handle_of(slot: u32, generation: u32) -> f64 {
    (generation as f64) * f64::from(1u32 << SLOT_BITS) + slot as f64
}

/// The slot a handle names, when its generation is the slot's current one and it holds an index.
fn slot_of(t: &Table, handle: f64) -> Option<u32> {
    if !(handle >= 0.0 && handle.fract() == 0.0 && handle < 2f64.powi(53)) {
        return None;
    }
    let h = handle as u64;
    let slot = (h & ((1 << SLOT_BITS) - 1)) as u32;
    let generation = h >> SLOT_BITS;
    match t.slots.get(slot as usize) {
        Some((g, p)) if *g as u64 == generation && !p.is_null() => Some(slot),
        _ => None,
    }
}

fn lookup(handle: f64) -> Option<*mut RadixIndex> {
    TABLE.with(|t| {
        let t = t.borrow();
        let slot = slot_of(&t, handle)?;
        Some(t.slots[slot as usize].1)
    })
}

fn invalid(what: &str) -> Error {
    Error::new(Status::InvalidArg, format!("findMatchesPacked: {what}"))
}

fn check(status: sys::napi_status, what: &str) -> Result<()> {
    if status == sys::Status::napi_ok {
        Ok(())
    } else {
        Err(invalid(what))
    }
}

/// A typed array argument of the given kind: pointer and length in elements.
unsafe fn typed(
    env: sys::napi_env,
    v: sys::napi_value,
    want: sys::napi_typedarray_type,
    what: &str,
) -> Result<(*mut c_void, usize)> {
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
    if kind != want {
        return Err(invalid(what));
    }
    Ok((data, len))
}

/// `findMatchesPacked(handle, tokensHashes, earlyExit, out, offset)`: what `findMatches(tokensHashes,
/// earlyExit, out)` does on the index `handle` names, written at byte `offset` of `out`. Returns the
/// bytes written, or minus the bytes needed when they do not fit (nothing is written then).
unsafe fn find_matches_packed(
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
        return Err(invalid(
            "takes (handle, tokensHashes, earlyExit, out, offset)",
        ));
    }
    let mut handle = 0f64;
    check(
        unsafe { sys::napi_get_value_double(env, argv[0], &mut handle) },
        "handle must be a number",
    )?;
    let (hashes_ptr, hashes_len) = unsafe {
        typed(
            env,
            argv[1],
            sys::TypedarrayType::biguint64_array,
            "tokensHashes must be a BigUint64Array",
        )
    }?;
    let mut early_exit = false;
    check(
        unsafe { sys::napi_get_value_bool(env, argv[2], &mut early_exit) },
        "earlyExit must be a boolean",
    )?;
    let (out_ptr, out_len) = unsafe {
        typed(
            env,
            argv[3],
            sys::TypedarrayType::uint8_array,
            "out must be a Uint8Array",
        )
    }?;
    let mut offset = 0f64;
    check(
        unsafe { sys::napi_get_value_double(env, argv[4], &mut offset) },
        "offset must be a number",
    )?;
    if !(offset >= 0.0 && offset.fract() == 0.0 && offset <= out_len as f64) {
        return Err(invalid("offset must be an integer within out"));
    }
    let index = lookup(handle).ok_or_else(|| closed("RadixIndex"))?;
    // SAFETY: a registered index is alive (see `register`); JavaScript is blocked in this call and
    // no other Rust code of this thread holds a reference to it (no method of the index calls
    // back into JavaScript while it holds one).
    let index = unsafe { &mut *index };
    let matches = {
        let query: &[u64] = if hashes_len == 0 {
            &[]
        } else {
            // SAFETY: the typed array's elements (a BigUint64Array is 8-byte aligned), alive while
            // JavaScript is blocked in this call; only read, and not used once the walk is done,
            // before `out` (which may be the same memory) is written.
            unsafe { std::slice::from_raw_parts(hashes_ptr.cast::<u64>(), hashes_len) }
        };
        index.find_matches_ref(query, early_exit)
    };
    let room = out_len - offset as usize;
    let written = if room == 0 {
        write_matches(matches, &mut [])
    } else {
        // SAFETY: in bounds (offset <= out_len checked above); the caller's buffer, alive while
        // JavaScript is blocked in this call, and no other slice of it is live here.
        let out = unsafe {
            std::slice::from_raw_parts_mut(out_ptr.cast::<u8>().add(offset as usize), room)
        };
        write_matches(matches, out)
    };
    let mut result = ptr::null_mut();
    check(
        unsafe { sys::napi_create_double(env, written as f64, &mut result) },
        "cannot create the result",
    )?;
    Ok(result)
}

unsafe extern "C" fn find_matches_packed_cb(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> sys::napi_value {
    let r = std::panic::catch_unwind(|| unsafe { find_matches_packed(env, info) })
        .map_err(|_| {
            Error::new(
                Status::GenericFailure,
                "findMatchesPacked panicked".to_owned(),
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

/// `findMatchesPacked` as a plain function (napi-rs keeps a single module-exports hook, so the
/// callback is handed out by this export instead; the caller asks once and keeps it).
#[napi(
    ts_return_type = "(handle: number, tokensHashes: BigUint64Array, earlyExit: boolean, out: Uint8Array, offset: number) => number"
)]
pub fn find_matches_packed_function(env: &Env) -> Result<Unknown<'_>> {
    let raw = env.raw();
    let mut f = ptr::null_mut();
    check(
        unsafe {
            sys::napi_create_function(
                raw,
                c"findMatchesPacked".as_ptr(),
                "findMatchesPacked".len() as isize,
                Some(find_matches_packed_cb),
                ptr::null_mut(),
                &mut f,
            )
        },
        "cannot create findMatchesPacked",
    )?;
    // SAFETY: a function value just created in this environment
    Ok(unsafe { Unknown::from_raw_unchecked(raw, f) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_names_one_live_index_and_is_not_reused() {
        let mut a = RadixIndex::new();
        let mut b = RadixIndex::new();
        let ha = unsafe { register(&mut a) };
        assert_eq!(lookup(ha), Some(&mut a as *mut RadixIndex));
        unregister(ha);
        assert_eq!(lookup(ha), None);
        unregister(ha); // twice: nothing
                        // the freed slot comes back under its next generation
        let hb = unsafe { register(&mut b) };
        assert_ne!(ha, hb);
        assert_eq!(lookup(ha), None);
        assert_eq!(lookup(hb), Some(&mut b as *mut RadixIndex));
        for bad in [
            -1.0,
            0.5,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            2f64.powi(60),
            hb + 1.0,
        ] {
            assert_eq!(lookup(bad), None, "handle {bad}");
        }
        unregister(hb);
        assert_eq!(lookup(hb), None);
    }
}
