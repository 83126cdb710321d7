//! What the plain Node-API callbacks (`ingestPacked`, `benchIngestLoop`, `findMatchesPacked`) share.
//!
//! A `#[napi]` method pays for napi-rs's generic borrow tracking on every call (a scope allocated
//! per call, the receiver checked against a class registry and entered into a locked map), which on
//! a hot path costs about as much as a small piece of the work itself. These callbacks convert their
//! arguments themselves and find their object by a handle (a slot and a generation) in a per-thread
//! [`Handles`] table, never by unwrapping `this`, so that no receiver, however it was obtained, can
//! make them read memory of another type.

use std::ffi::c_void;
use std::ptr;

use napi::bindgen_prelude::*;
use napi::sys;

/// Slots below 2^21 and generations below 2^32 keep a handle an exact integer in a JS number.
const SLOT_BITS: u32 = 21;

/// Slots of registered objects: (generation, the object, or None when the slot is free). A slot is
/// reused with the next generation, so a handle of a freed object never names its successor.
pub(crate) struct Handles<T> {
    slots: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
}

impl<T> Handles<T> {
    pub(crate) const fn new() -> Self {
        Handles {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    /// Enters `value`; returns its handle.
    pub(crate) fn register(&mut self, value: T) -> f64 {
        let slot = match self.free.pop() {
            Some(s) => {
                let entry = &mut self.slots[s as usize];
                entry.0 = entry.0.wrapping_add(1);
                entry.1 = Some(value);
                s
            }
            None => {
                self.slots.push((0, Some(value)));
                (self.slots.len() - 1) as u32
            }
        };
        f64::from(self.slots[slot as usize].0) * f64::from(1u32 << SLOT_BITS) + f64::from(slot)
    }

    /// Frees a handle's slot (its object is being finalized); a stale handle changes nothing.
    pub(crate) fn unregister(&mut self, handle: f64) {
        if let Some(slot) = self.slot_of(handle) {
            self.slots[slot].1 = None;
            self.free.push(slot as u32);
        }
    }

    /// The object a handle names, when its generation is its slot's current one.
    pub(crate) fn get(&self, handle: f64) -> Option<&T> {
        self.slots[self.slot_of(handle)?].1.as_ref()
    }

    fn slot_of(&self, handle: f64) -> Option<usize> {
        if !(handle >= 0.0 && handle.fract() == 0.0 && handle < 2f64.powi(53)) {
            return None;
        }
        let h = handle as u64;
        let slot = (h & ((1 << SLOT_BITS) - 1)) as usize;
        match self.slots.get(slot) {
            Some((g, Some(_))) if u64::from(*g) == h >> SLOT_BITS => Some(slot),
            _ => None,
        }
    }
}

/// An argument error of the callback `name`: `"{name}: {what}"`.
pub(crate) fn invalid(name: &str, what: &str) -> Error {
    Error::new(Status::InvalidArg, format!("{name}: {what}"))
}

/// A Node-API status as a result: anything but ok is the error `"{name}: {what}"`.
pub(crate) fn check(status: sys::napi_status, name: &str, what: &str) -> Result<()> {
    if status == sys::Status::napi_ok {
        Ok(())
    } else {
        Err(invalid(name, what))
    }
}

/// The first `N` arguments of a call; fewer is an error naming the callback's `usage`.
///
/// # Safety
///
/// `env` and `info` are the ones Node-API passed to the running callback.
pub(crate) unsafe fn args<const N: usize>(
    env: sys::napi_env,
    info: sys::napi_callback_info,
    name: &str,
    usage: &str,
) -> Result<[sys::napi_value; N]> {
    unsafe { args_up_to::<N>(env, info, N, name, usage) }
}

/// The first `N` arguments of a call, of which the first `required`; fewer is an error naming the
/// callback's `usage`. Missing optional ones are `undefined` (Node-API fills them in).
///
/// # Safety
///
/// `env` and `info` are the ones Node-API passed to the running callback.
pub(crate) unsafe fn args_up_to<const N: usize>(
    env: sys::napi_env,
    info: sys::napi_callback_info,
    required: usize,
    name: &str,
    usage: &str,
) -> Result<[sys::napi_value; N]> {
    let mut argc = N;
    let mut argv = [ptr::null_mut(); N];
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
        name,
        "bad call",
    )?;
    if argc < required {
        return Err(invalid(name, &format!("takes {usage}")));
    }
    Ok(argv)
}

/// A number argument.
///
/// # Safety
///
/// `v` is a value of the running call in `env`.
pub(crate) unsafe fn number(
    env: sys::napi_env,
    v: sys::napi_value,
    name: &str,
    what: &str,
) -> Result<f64> {
    let mut x = 0f64;
    check(
        unsafe { sys::napi_get_value_double(env, v, &mut x) },
        name,
        what,
    )?;
    Ok(x)
}

/// A boolean argument; `undefined` is `absent` where that is given (an optional argument), an
/// error otherwise.
///
/// # Safety
///
/// `v` is a value of the running call in `env`.
pub(crate) unsafe fn boolean(
    env: sys::napi_env,
    v: sys::napi_value,
    absent: Option<bool>,
    name: &str,
    what: &str,
) -> Result<bool> {
    let mut x = false;
    if unsafe { sys::napi_get_value_bool(env, v, &mut x) } == sys::Status::napi_ok {
        return Ok(x);
    }
    let mut kind = 0;
    match absent {
        Some(absent)
            if unsafe { sys::napi_typeof(env, v, &mut kind) } == sys::Status::napi_ok
                && kind == sys::ValueType::napi_undefined =>
        {
            Ok(absent)
        }
        _ => Err(invalid(name, what)),
    }
}

/// A typed array argument of the kind `want`: its data pointer and its length in elements.
///
/// # Safety
///
/// `v` is a value of the running call in `env`; the memory stays valid only while JavaScript is
/// blocked in this call.
pub(crate) unsafe fn typed(
    env: sys::napi_env,
    v: sys::napi_value,
    want: sys::napi_typedarray_type,
    name: &str,
    what: &str,
) -> Result<(*mut c_void, usize)> {
    let mut kind = 0;
    let mut len = 0usize;
    let mut data: *mut c_void = ptr::null_mut();
    check(
        unsafe {
            sys::napi_get_typedarray_info(
                env,
                v,
                &mut kind,
                &mut len,
                &mut data,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        },
        name,
        what,
    )?;
    if kind != want {
        return Err(invalid(name, what));
    }
    Ok((data, len))
}

/// A JS number.
///
/// # Safety
///
/// `env` is the running call's.
pub(crate) unsafe fn js_number(env: sys::napi_env, x: f64, name: &str) -> Result<sys::napi_value> {
    let mut result = ptr::null_mut();
    check(
        unsafe { sys::napi_create_double(env, x, &mut result) },
        name,
        "cannot create the result",
    )?;
    Ok(result)
}

/// Runs a callback's body: an error is thrown into JavaScript, a panic becomes the error
/// `"{name} panicked"`; never unwinds into Node.
///
/// # Safety
///
/// `env` is the running call's.
pub(crate) unsafe fn run(
    env: sys::napi_env,
    name: &str,
    body: impl FnOnce() -> Result<sys::napi_value>,
) -> sys::napi_value {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body))
        .map_err(|_| Error::new(Status::GenericFailure, format!("{name} panicked")))
        .and_then(|r| r);
    match r {
        Ok(v) => v,
        Err(e) => {
            unsafe { JsError::from(e).throw_into(env) };
            ptr::null_mut()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Handles;

    #[test]
    fn a_freed_slot_comes_back_under_a_new_generation_and_stale_handles_name_nothing() {
        let mut t = Handles::new();
        let a = t.register('a');
        let b = t.register('b');
        assert_eq!((t.get(a), t.get(b)), (Some(&'a'), Some(&'b')));
        t.unregister(a);
        assert_eq!(t.get(a), None);
        let c = t.register('c');
        assert_ne!(a, c);
        assert_eq!((t.get(a), t.get(c)), (None, Some(&'c')));
        t.unregister(a);
        assert_eq!(t.get(c), Some(&'c'));
        for bad in [-1.0, 0.5, f64::NAN, f64::INFINITY, 2f64.powi(53), 1e300] {
            assert_eq!(t.get(bad), None);
            t.unregister(bad);
        }
        assert_eq!(t.get(b), Some(&'b'));
    }
}
