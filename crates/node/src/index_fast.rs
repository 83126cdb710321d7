//! `findMatchesPacked` (from `findMatchesPackedFunction()`): `findMatches` as a plain Node-API
//! callback (see `plain`), finding its index by a handle from `RawRadixIndex.handle()`. A handle that
//! no longer names a live index fails with `RadixIndex is closed`.

// napi-rs registers its exports outside `cfg(test)`: in a test build nothing calls them.
#![cfg_attr(test, allow(dead_code))]

use std::cell::RefCell;
use std::ptr;

use dynamo_kv_core::index::{write_matches, RadixIndex};
use napi::bindgen_prelude::*;
use napi::sys;
use napi_derive::napi;

use super::closed;
use crate::plain::{self, Handles};

const NAME: &str = "findMatchesPacked";

thread_local! {
    /// The registered indexes: the `inner` field of each live `RawRadixIndex`.
    static TABLE: RefCell<Handles<*mut RadixIndex>> = const { RefCell::new(Handles::new()) };
}

/// Enters an index; returns its handle.
///
/// # Safety
///
/// `index` must stay valid, at the same address, until `unregister` is called with the handle:
/// it is the `inner` field of a `RawRadixIndex` owned by its JavaScript object (napi-rs boxes it
/// once and frees it only in its finalizer, which unregisters first).
pub(crate) unsafe fn register(index: *mut RadixIndex) -> f64 {
    TABLE.with(|t| t.borrow_mut().register(index))
}

/// Frees a handle's slot (its index is being finalized).
pub(crate) fn unregister(handle: f64) {
    TABLE.with(|t| t.borrow_mut().unregister(handle))
}

fn lookup(handle: f64) -> Option<*mut RadixIndex> {
    TABLE.with(|t| t.borrow().get(handle).copied())
}

/// `findMatchesPacked(handle, tokensHashes, earlyExit, out, offset)`: what `findMatches(tokensHashes,
/// earlyExit, out)` does on the index `handle` names, written at byte `offset` of `out`. Returns the
/// bytes written, or minus the bytes needed when they do not fit (nothing is written then).
unsafe fn find_matches_packed(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> Result<sys::napi_value> {
    let [handle, hashes, early_exit, out, offset] = unsafe {
        plain::args::<5>(
            env,
            info,
            NAME,
            "(handle, tokensHashes, earlyExit, out, offset)",
        )
    }?;
    let handle = unsafe { plain::number(env, handle, NAME, "handle must be a number") }?;
    let (hashes_ptr, hashes_len) = unsafe {
        plain::typed(
            env,
            hashes,
            sys::TypedarrayType::biguint64_array,
            NAME,
            "tokensHashes must be a BigUint64Array",
        )
    }?;
    let early_exit =
        unsafe { plain::boolean(env, early_exit, None, NAME, "earlyExit must be a boolean") }?;
    let (out_ptr, out_len) = unsafe {
        plain::typed(
            env,
            out,
            sys::TypedarrayType::uint8_array,
            NAME,
            "out must be a Uint8Array",
        )
    }?;
    let offset = unsafe { plain::number(env, offset, NAME, "offset must be a number") }?;
    if !(offset >= 0.0 && offset.fract() == 0.0 && offset <= out_len as f64) {
        return Err(plain::invalid(NAME, "offset must be an integer within out"));
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
    unsafe { plain::js_number(env, written as f64, NAME) }
}

unsafe extern "C" fn find_matches_packed_cb(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> sys::napi_value {
    unsafe { plain::run(env, NAME, || find_matches_packed(env, info)) }
}

/// `findMatchesPacked` as a plain function (napi-rs keeps a single module-exports hook, so the
/// callback is handed out by this export instead; the caller asks once and keeps it).
#[napi(
    ts_return_type = "(handle: number, tokensHashes: BigUint64Array, earlyExit: boolean, out: Uint8Array, offset: number) => number"
)]
pub fn find_matches_packed_function(env: &Env) -> Result<Unknown<'_>> {
    let raw = env.raw();
    let mut f = ptr::null_mut();
    plain::check(
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
        NAME,
        "cannot create the function",
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
