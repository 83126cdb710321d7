//! The memory of the index's large arrays. Below `MAP_MIN` bytes an array lives on the global heap;
//! from there on Linux it is a mapping of its own, aligned to 2 MiB and advised for transparent huge
//! pages (`MADV_HUGEPAGE`, honoured where the kernel's THP mode is `madvise` or `always`), grown with
//! `mremap` so that its pages move instead of being copied and stay huge. A walk down the tree
//! touches a new node or edge slot at almost every step, scattered over tens of MiB: with 4 KiB
//! pages most steps also miss the TLB, with 2 MiB pages a million-entry index needs a few dozen
//! TLB entries.
//!
//! Mapped memory does not go through the global allocator; `mapped_bytes` tells how much is held,
//! and the index's `heap_bytes` counts it.

use std::alloc::{self, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The huge page size on x86-64 and arm64 Linux (with 4 KiB base pages).
const HUGE: usize = 2 << 20;
/// Arrays from this many bytes are mapped (smaller ones would waste most of a huge page).
const MAP_MIN: usize = 4 << 20;

static MAPPED: AtomicUsize = AtomicUsize::new(0);

/// Bytes the index arrays of this process hold in mappings of their own (outside the global
/// allocator), whole huge pages included.
pub fn mapped_bytes() -> usize {
    MAPPED.load(Ordering::Relaxed)
}

/// Uninitialized room for `cap` values of `T`: on the global heap, or mapped (`mapped` bytes, a
/// multiple of `HUGE`). Owns the memory, not the values.
pub(super) struct Buf<T> {
    ptr: NonNull<T>,
    cap: usize,
    /// 0 for heap memory (or none), else the mapping's length.
    mapped: usize,
}

// The buffer is plain memory owned by one value; sending or sharing it is as safe as for the values.
unsafe impl<T: Send> Send for Buf<T> {}
unsafe impl<T: Sync> Sync for Buf<T> {}

impl<T> Buf<T> {
    pub const fn new() -> Self {
        const { assert!(std::mem::size_of::<T>() > 0) };
        Buf {
            ptr: NonNull::dangling(),
            cap: 0,
            mapped: 0,
        }
    }

    #[inline]
    pub fn ptr(&self) -> *mut T {
        self.ptr.as_ptr()
    }

    #[inline]
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Bytes held (a mapping's whole length).
    pub fn bytes(&self) -> usize {
        if self.mapped > 0 {
            self.mapped
        } else {
            self.cap * std::mem::size_of::<T>()
        }
    }

    /// Room for `want` values, at least `need` (> `len`), keeping the first `len` values where they
    /// are or moving them along with their pages. A mapping takes whole huge pages: the wish rounded
    /// down, unless that is less than the need rounded up.
    pub fn grow(&mut self, len: usize, need: usize, want: usize) {
        debug_assert!(len <= self.cap && need > len && want >= need);
        let size = std::mem::size_of::<T>();
        let Some(bytes) = want.checked_mul(size) else {
            capacity_overflow()
        };
        if self.mapped > 0 || (bytes >= MAP_MIN && map::AVAILABLE) {
            let bytes = (bytes / HUGE * HUGE).max((need * size).div_ceil(HUGE) * HUGE);
            if self.grow_mapped(len, bytes) {
                return;
            }
            if self.mapped > 0 {
                // SAFETY: HUGE is a power of two and `bytes` is not zero.
                alloc::handle_alloc_error(unsafe { Layout::from_size_align_unchecked(bytes, HUGE) })
            }
        }
        self.grow_heap(want);
    }

    fn grow_heap(&mut self, want: usize) {
        let layout = Layout::array::<T>(want).unwrap_or_else(|_| capacity_overflow());
        // SAFETY: `layout` has a non-zero size (T is not zero-sized and every caller wants room
        // for at least one more value); the old block, when there is one, was allocated with
        // `old_layout`.
        let p = unsafe {
            if self.cap == 0 {
                alloc::alloc(layout)
            } else {
                let old_layout =
                    Layout::array::<T>(self.cap).unwrap_or_else(|_| capacity_overflow());
                alloc::realloc(self.ptr.as_ptr().cast(), old_layout, layout.size())
            }
        };
        let Some(p) = NonNull::new(p.cast::<T>()) else {
            alloc::handle_alloc_error(layout)
        };
        self.ptr = p;
        self.cap = want;
    }

    /// Moves to (or grows) a mapping of `bytes`; false when the system refused it (the heap is used).
    fn grow_mapped(&mut self, len: usize, bytes: usize) -> bool {
        let size = std::mem::size_of::<T>();
        let new = if self.mapped > 0 {
            // SAFETY: `self.ptr` is a live mapping of `self.mapped` bytes made by `map`.
            unsafe { map::extend(self.ptr.as_ptr().cast(), self.mapped, bytes) }
        } else {
            // SAFETY: a fresh mapping; the old heap block holds `len` initialized values, copied
            // over before the block is freed.
            unsafe {
                let Some(p) = map::map(bytes) else {
                    return false;
                };
                std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), p.cast::<T>(), len);
                if self.cap > 0 {
                    let old = Layout::array::<T>(self.cap).unwrap_or_else(|_| capacity_overflow());
                    alloc::dealloc(self.ptr.as_ptr().cast(), old);
                }
                Some(p)
            }
        };
        let Some(p) = new else {
            return false;
        };
        MAPPED.fetch_add(bytes - self.mapped, Ordering::Relaxed);
        // SAFETY: mmap never returns null on success.
        self.ptr = unsafe { NonNull::new_unchecked(p.cast::<T>()) };
        self.mapped = bytes;
        self.cap = bytes / size;
        true
    }
}

impl<T> Drop for Buf<T> {
    fn drop(&mut self) {
        if self.mapped > 0 {
            // SAFETY: a mapping of `self.mapped` bytes made by `map`.
            unsafe { map::unmap(self.ptr.as_ptr().cast(), self.mapped) };
            MAPPED.fetch_sub(self.mapped, Ordering::Relaxed);
        } else if self.cap > 0 {
            let layout = Layout::array::<T>(self.cap).unwrap_or_else(|_| capacity_overflow());
            // SAFETY: allocated by `grow_heap` with this layout.
            unsafe { alloc::dealloc(self.ptr.as_ptr().cast(), layout) };
        }
    }
}

impl<T> std::fmt::Debug for Buf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buf")
            .field("cap", &self.cap)
            .field("mapped", &self.mapped)
            .finish()
    }
}

fn capacity_overflow() -> ! {
    panic!("index array capacity overflow")
}

#[cfg(target_os = "linux")]
mod map {
    use super::HUGE;
    use std::ptr::null_mut;

    pub const AVAILABLE: bool = true;

    /// A new private anonymous mapping of `bytes` (a multiple of HUGE) starting on a HUGE boundary,
    /// advised for huge pages before any of it is touched.
    pub unsafe fn map(bytes: usize) -> Option<*mut u8> {
        let span = bytes.checked_add(HUGE)?;
        let p = libc::mmap(
            null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return None;
        }
        let base = p as usize;
        let start = base.next_multiple_of(HUGE);
        let head = start - base;
        if head > 0 {
            libc::munmap(p, head);
        }
        let tail = span - head - bytes;
        if tail > 0 {
            libc::munmap((start + bytes) as *mut libc::c_void, tail);
        }
        // advice only: without THP the mapping works with base pages
        libc::madvise(start as *mut libc::c_void, bytes, libc::MADV_HUGEPAGE);
        Some(start as *mut u8)
    }

    /// The mapping at `p` of `old` bytes grown to `new` bytes: in place when the address space after
    /// it is free, else moved (its pages with it) to a new aligned mapping. None when refused; the
    /// old mapping is then unchanged.
    pub unsafe fn extend(p: *mut u8, old: usize, new: usize) -> Option<*mut u8> {
        let q = libc::mremap(p.cast(), old, new, 0);
        if q != libc::MAP_FAILED {
            return Some(p);
        }
        let target = map(new)?;
        let q = libc::mremap(
            p.cast(),
            old,
            old,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            target.cast::<libc::c_void>(),
        );
        if q == libc::MAP_FAILED {
            libc::munmap(target.cast(), new);
            return None;
        }
        Some(target)
    }

    pub unsafe fn unmap(p: *mut u8, bytes: usize) {
        libc::munmap(p.cast(), bytes);
    }
}

#[cfg(not(target_os = "linux"))]
mod map {
    pub const AVAILABLE: bool = false;

    pub unsafe fn map(_bytes: usize) -> Option<*mut u8> {
        None
    }

    pub unsafe fn extend(_p: *mut u8, _old: usize, _new: usize) -> Option<*mut u8> {
        None
    }

    pub unsafe fn unmap(_p: *mut u8, _bytes: usize) {}
}

#[cfg(test)]
mod tests {
    use super::super::table::Arena;
    use super::*;
    use std::rc::Rc;

    /// Pushes values past the mapping threshold (and through several growths there) and reads
    /// every one back, checking where the memory came from at each size.
    #[test]
    fn arena_keeps_its_values_from_the_heap_into_a_growing_mapping() {
        let mut a: Arena<[u64; 4]> = Arena::default();
        let n = 3 * MAP_MIN / 32 + 12_345; // about 12 MiB of 32-byte values
        let mut saw_heap = false;
        for i in 0..n as u64 {
            a.push([i, !i, i.wrapping_mul(0x9e37_79b9_7f4a_7c15), 7]);
            let bytes = a.heap_bytes();
            if bytes < MAP_MIN {
                saw_heap = true;
            } else if map::AVAILABLE {
                assert_eq!(bytes % HUGE, 0, "a mapped arena holds whole huge pages");
                assert!(bytes >= (i as usize + 1) * 32);
            }
        }
        assert!(saw_heap);
        assert_eq!(a.len(), n);
        for (i, v) in a.iter().enumerate() {
            let i = i as u64;
            assert_eq!(*v, [i, !i, i.wrapping_mul(0x9e37_79b9_7f4a_7c15), 7]);
        }
        if map::AVAILABLE {
            // at most an eighth spare, or the one huge page the last value needed
            assert!(a.heap_bytes() <= (n * 32 + n * 32 / 8).max(n * 32 + HUGE));
            let start = a.as_slice().as_ptr() as usize;
            assert_eq!(start % HUGE, 0, "a mapping starts on a huge page boundary");
        }
    }

    /// A mapped arena drops each of its values exactly once, and gives its memory back.
    #[test]
    fn arena_drops_every_value_once() {
        let token = Rc::new(());
        let n = MAP_MIN / std::mem::size_of::<(Rc<()>, [u64; 3])>() + 1000;
        {
            let mut a = Arena::default();
            for i in 0..n {
                a.push((token.clone(), [i as u64; 3]));
            }
            assert_eq!(Rc::strong_count(&token), n + 1);
            assert_eq!(a[n - 1].1, [(n - 1) as u64; 3]);
            a[0].1 = [9; 3];
            assert_eq!(a[0].1, [9; 3]);
        }
        assert_eq!(Rc::strong_count(&token), 1);
    }

    #[test]
    fn filled_arenas_hold_exactly_what_was_asked() {
        for n in [
            0usize,
            1,
            1000,
            MAP_MIN / 16,
            MAP_MIN / 16 + 1,
            3 * MAP_MIN / 16,
        ] {
            let a = Arena::filled(n, (u64::MAX, n as u64));
            assert_eq!(a.len(), n);
            assert!(a.iter().all(|&v| v == (u64::MAX, n as u64)));
            assert!(a.heap_bytes() >= n * 16);
        }
    }

    /// Growing a mapping whose neighbour is taken moves it (pages and all) to a new aligned one.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_mapping_moves_when_it_cannot_grow_in_place() {
        unsafe {
            let p = map::map(2 * HUGE).expect("mapped");
            // take the address space right after it, so that it cannot grow in place
            let after = libc::mmap(
                p.add(2 * HUGE).cast(),
                4096,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            );
            assert_eq!(
                after.cast::<u8>(),
                p.add(2 * HUGE),
                "the neighbour is taken"
            );
            for i in 0..2 * HUGE / 8 {
                p.cast::<u64>().add(i).write(i as u64 ^ 0xa5a5);
            }
            let q = map::extend(p, 2 * HUGE, 4 * HUGE).expect("grown");
            assert_ne!(q, p, "moved");
            libc::munmap(after, 4096);
            assert_eq!(q as usize % HUGE, 0);
            for i in 0..2 * HUGE / 8 {
                assert_eq!(q.cast::<u64>().add(i).read(), i as u64 ^ 0xa5a5);
            }
            // the new part is there, zeroed, and writable
            assert_eq!(q.add(4 * HUGE - 1).read(), 0);
            q.add(4 * HUGE - 1).write(1);
            map::unmap(q, 4 * HUGE);
        }
    }
}
