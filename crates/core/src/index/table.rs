//! Storage for the radix index: an arena that grows by an eighth (little spare capacity) and the
//! per-worker table of block hash → holder entry that stores only the u32 entry, reading each
//! entry's block hash back through the index (`resolve`).

use std::ops::{Index, IndexMut};

use super::pages::Buf;

/// A vector addressed by u32 that grows by 1/8 of its length (at least 1024 elements) instead of
/// doubling: at most 1/8 spare capacity where a `Vec` leaves up to half. A large one is mapped for
/// huge pages and grows by moving its pages (`pages::Buf`).
pub(super) struct Arena<T> {
    buf: Buf<T>,
    len: usize,
}

impl<T> Default for Arena<T> {
    fn default() -> Self {
        Arena {
            buf: Buf::new(),
            len: 0,
        }
    }
}

impl<T: Copy> Arena<T> {
    /// `n` copies of `v`.
    pub fn filled(n: usize, v: T) -> Self {
        let mut a: Arena<T> = Arena::default();
        if n > 0 {
            a.buf.grow(0, n, n);
            let p = a.buf.ptr();
            for i in 0..n {
                // SAFETY: the buffer has room for at least n values.
                unsafe { p.add(i).write(v) };
            }
            a.len = n;
        }
        a
    }
}

impl<T> Arena<T> {
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub fn push(&mut self, v: T) {
        if self.len == self.buf.cap() {
            let n = self.len;
            let more = if n < 64 { n.max(4) } else { (n / 8).max(1024) };
            self.buf.grow(n, n + 1, n + more);
        }
        // SAFETY: len < cap after the growth.
        unsafe { self.buf.ptr().add(self.len).write(v) };
        self.len += 1;
    }

    /// Element capacity.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.buf.cap()
    }

    /// Heap bytes held (a mapped arena's whole mapping).
    pub fn heap_bytes(&self) -> usize {
        self.buf.bytes()
    }

    #[inline]
    pub fn as_slice(&self) -> &[T] {
        // SAFETY: the first len values are initialized; the pointer is non-null and aligned.
        unsafe { std::slice::from_raw_parts(self.buf.ptr(), self.len) }
    }

    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in as_slice, and the arena is borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.buf.ptr(), self.len) }
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.as_slice().iter()
    }
}

impl<T> Drop for Arena<T> {
    fn drop(&mut self) {
        // SAFETY: drops the initialized values once; the buffer frees the memory after this.
        unsafe { std::ptr::drop_in_place(self.as_mut_slice()) };
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Arena<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("len", &self.len)
            .field("buf", &self.buf)
            .finish()
    }
}

impl<T> Index<usize> for Arena<T> {
    type Output = T;
    #[inline]
    fn index(&self, i: usize) -> &T {
        &self.as_slice()[i]
    }
}

impl<T> IndexMut<usize> for Arena<T> {
    #[inline]
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut self.as_mut_slice()[i]
    }
}

/// Slots per group: a probe reads one group's 16 tags at a time.
const GROUP: usize = 16;
const EMPTY: u8 = 0;
const TOMB: u8 = 1;

/// What the table's entries stand for: the hash of one, and of many at once (a rehash reads
/// them all; the batch lets their cache misses overlap).
pub(super) trait Resolve {
    fn hash(&self, entry: u32) -> u64;
    fn hashes(&self, entries: &[u32], out: &mut Vec<u64>) {
        out.clear();
        out.extend(entries.iter().map(|&e| self.hash(e)));
    }
}

/// A set of u32 entries keyed by a u64 block hash that is not stored: `Resolve` gives it back.
/// Open addressing over groups of 16 slots, probed group after group, with a one-byte tag per
/// slot kept apart from the entries (as a SwissTable's control bytes: the tags of all tables
/// stay in cache, so an insert reads no entry and a lookup reads only the entry it finds), and
/// 254 tag values. Each slot also keeps the top 16 bits of its key's mix: a probe compares them
/// after a tag matches, so that `Resolve` runs almost only on the entry sought, and with the tag
/// they choose the slot's home group (in a table of up to `SMALL` groups), so that the table
/// rehashes from its own memory without reading any entry's hash back. Any group count (not only
/// powers of two), grown by 1.5x at 7/8 full, so that it is 58-88% full. Deletion leaves a
/// tombstone only in a group without empty slots (a probe never went past a group that has one).
#[derive(Debug, Default)]
pub(super) struct HashTable {
    tags: Vec<[u8; GROUP]>,
    /// The top 16 bits of each slot's mix.
    highs: Vec<[u16; GROUP]>,
    entries: Vec<[u32; GROUP]>,
    len: u32,
    /// Empty slots that may still be filled before a rehash (keeps 1/8 of the slots empty).
    growth_left: u32,
}

/// Tables with at most this many groups find a slot's home from its 24 stored bits (tag and high
/// bits), with at most 1 / 2^(24 - log2 groups) imbalance between groups; larger ones from the
/// whole mix, and read every entry's hash back when they rehash. Tests use a small limit, so that
/// both ways run.
#[cfg(not(test))]
const SMALL: usize = 1 << 24;
#[cfg(test)]
const SMALL: usize = 1 << 6;

#[inline]
fn mix(h: u64, seed: u64) -> u64 {
    let mut z = (h ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 32)).wrapping_mul(0xd6e8_feb8_6659_fd93);
    z ^ (z >> 32)
}

/// A slot's tag, from bits that do not choose the group.
#[inline]
fn tag_of(z: u64) -> u8 {
    let t = z as u8;
    if t <= TOMB {
        t + 2
    } else {
        t
    }
}

/// The home group of a key whose mix is `z` in a table of `n` groups: from what a slot stores of
/// `z` (`stored_home`) while `n` is at most `SMALL`, else from all of `z`.
#[inline]
fn home_in(z: u64, n: usize) -> usize {
    if n <= SMALL {
        stored_home(tag_of(z), (z >> 48) as u16, n)
    } else {
        ((z as u128 * n as u128) >> 64) as usize
    }
}

/// The home group, among `n <= SMALL`, of a slot with this tag and these high bits: 24 bits of the
/// key's mix scaled to `n`.
#[inline]
fn stored_home(tag: u8, high: u16, n: usize) -> usize {
    ((((high as u64) << 8 | tag as u64) * n as u64) >> 24) as usize
}

/// A hint to load the cache line at `p` (nothing where there is no such instruction).
#[inline(always)]
pub(super) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86_64, and a prefetch does not access memory: any address is
    // allowed, even an invalid one.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Bit i set where `tags[i] == t`: one compare of the 16 bytes and a mask of the results.
#[cfg(target_arch = "x86_64")]
#[inline]
fn matches(tags: &[u8; GROUP], t: u8) -> u32 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
    };
    // SAFETY: `tags` is 16 readable bytes (an unaligned load), and SSE2 is part of x86_64.
    unsafe {
        let g = _mm_loadu_si128(tags.as_ptr() as *const __m128i);
        _mm_movemask_epi8(_mm_cmpeq_epi8(g, _mm_set1_epi8(t as i8))) as u32
    }
}

/// Bit i set where `tags[i] == t`.
#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn matches(tags: &[u8; GROUP], t: u8) -> u32 {
    let mut m = 0;
    for (i, &x) in tags.iter().enumerate() {
        m |= ((x == t) as u32) << i;
    }
    m
}

impl HashTable {
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn heap_bytes(&self) -> usize {
        self.tags.capacity() * GROUP
            + self.highs.capacity() * GROUP * 2
            + self.entries.capacity() * GROUP * 4
    }

    /// Slots (for estimates).
    pub fn slots(&self) -> usize {
        self.tags.capacity() * GROUP
    }

    #[inline]
    fn home(&self, z: u64) -> usize {
        home_in(z, self.tags.len())
    }

    /// Loads the group where a probe for `h` starts into the cache, ahead of its use.
    #[inline]
    pub fn prefetch(&self, h: u64, seed: u64) {
        if self.tags.is_empty() {
            return;
        }
        let g = self.home(mix(h, seed));
        prefetch(self.tags.as_ptr().wrapping_add(g));
        prefetch(self.highs.as_ptr().wrapping_add(g));
        prefetch(self.entries.as_ptr().wrapping_add(g));
    }

    /// The position (group * GROUP + slot) and entry whose resolved hash is `h`.
    #[inline]
    pub fn find(&self, h: u64, seed: u64, resolve: &impl Resolve) -> Option<(usize, u32)> {
        if self.len == 0 {
            return None;
        }
        self.probe::<false>(h, seed, resolve).ok()
    }

    /// `find`, or when `h` is absent, the free slot where `insert_at` puts it (room is made first:
    /// one probe serves both).
    #[inline]
    pub fn find_or_vacant(
        &mut self,
        h: u64,
        seed: u64,
        resolve: &impl Resolve,
    ) -> Result<(usize, u32), usize> {
        if self.growth_left == 0 {
            self.rehash(seed, resolve);
        }
        self.probe::<true>(h, seed, resolve)
    }

    /// The probe behind `find` and `find_or_vacant`: the position and entry of `h`, or where it
    /// would go (the first free or deleted slot on its probe path, when `VACANT`; otherwise
    /// `usize::MAX`, which only `find` asks for and never uses). The table has at least one group.
    #[inline(always)]
    fn probe<const VACANT: bool>(
        &self,
        h: u64,
        seed: u64,
        resolve: &impl Resolve,
    ) -> Result<(usize, u32), usize> {
        let z = mix(h, seed);
        let (tag, high) = (tag_of(z), (z >> 48) as u16);
        let n = self.tags.len();
        let mut g = self.home(z);
        let mut vacant = usize::MAX;
        loop {
            let tags = &self.tags[g];
            let mut m = matches(tags, tag);
            while m != 0 {
                let i = m.trailing_zeros() as usize;
                m &= m - 1;
                let e = self.entries[g][i];
                if self.highs[g][i] == high && resolve.hash(e) == h {
                    return Ok((g * GROUP + i, e));
                }
            }
            let empty = matches(tags, EMPTY);
            if VACANT && vacant == usize::MAX {
                let free = empty | matches(tags, TOMB);
                if free != 0 {
                    vacant = g * GROUP + free.trailing_zeros() as usize;
                }
            }
            if empty != 0 {
                return Err(vacant);
            }
            g += 1;
            if g == n {
                g = 0;
            }
        }
    }

    /// Puts the entry for `h` at the slot `find_or_vacant` gave (nothing changed the table since).
    #[inline]
    pub fn insert_at(&mut self, pos: usize, h: u64, entry: u32, seed: u64) {
        let t = &mut self.tags[pos / GROUP][pos % GROUP];
        if *t == EMPTY {
            self.growth_left -= 1;
        }
        let z = mix(h, seed);
        *t = tag_of(z);
        self.highs[pos / GROUP][pos % GROUP] = (z >> 48) as u16;
        self.entries[pos / GROUP][pos % GROUP] = entry;
        self.len += 1;
    }

    /// Replaces the entry at `pos` by one that resolves to the same hash.
    #[inline]
    pub fn set(&mut self, pos: usize, entry: u32) {
        self.entries[pos / GROUP][pos % GROUP] = entry;
    }

    /// Removes the entry at `pos`.
    pub fn erase(&mut self, pos: usize) {
        let tags = &mut self.tags[pos / GROUP];
        if matches(tags, EMPTY) != 0 {
            tags[pos % GROUP] = EMPTY;
            self.growth_left += 1;
        } else {
            tags[pos % GROUP] = TOMB;
        }
        self.len -= 1;
    }

    /// Adds an entry whose hash `h` is not in the table.
    #[cfg(test)]
    pub fn insert_new(&mut self, h: u64, entry: u32, seed: u64, resolve: &impl Resolve) {
        if self.growth_left == 0 {
            self.rehash(seed, resolve);
        }
        let z = mix(h, seed);
        self.place(z, entry);
        self.len += 1;
    }

    fn place(&mut self, z: u64, entry: u32) {
        self.place_at(self.home(z), tag_of(z), (z >> 48) as u16, entry);
    }

    #[inline]
    fn place_at(&mut self, home: usize, tag: u8, high: u16, entry: u32) {
        let n = self.tags.len();
        let mut g = home;
        loop {
            let tags = &mut self.tags[g];
            let free = matches(tags, EMPTY) | matches(tags, TOMB);
            if free != 0 {
                let i = free.trailing_zeros() as usize;
                if tags[i] == EMPTY {
                    self.growth_left -= 1;
                }
                tags[i] = tag;
                self.highs[g][i] = high;
                self.entries[g][i] = entry;
                return;
            }
            g += 1;
            if g == n {
                g = 0;
            }
        }
    }

    /// Rebuilds the table for its entries and one more, at 7/12 full.
    fn rehash(&mut self, seed: u64, resolve: &impl Resolve) {
        let live = self.len as usize;
        let groups = ((live + 1) * 12).div_ceil(7).div_ceil(GROUP);
        let tags = std::mem::replace(&mut self.tags, vec![[EMPTY; GROUP]; groups]);
        let highs = std::mem::replace(&mut self.highs, vec![[0; GROUP]; groups]);
        let entries = std::mem::replace(&mut self.entries, vec![[0; GROUP]; groups]);
        self.growth_left = (groups * GROUP - (groups * GROUP).div_ceil(8)) as u32;
        if groups <= SMALL {
            // from the stored bits: no entry's hash is read
            for ((t, h), e) in tags.iter().zip(&highs).zip(&entries) {
                for i in 0..GROUP {
                    if t[i] > TOMB {
                        let home = stored_home(t[i], h[i], groups);
                        self.place_at(home, t[i], h[i], e[i]);
                    }
                }
            }
            return;
        }
        let mut live: Vec<u32> = Vec::with_capacity(live);
        for (t, e) in tags.iter().zip(&entries) {
            live.extend((0..GROUP).filter(|&i| t[i] > TOMB).map(|i| e[i]));
        }
        drop((tags, highs, entries));
        // in ascending order, the nodes (and aliases) are read in address order
        live.sort_unstable();
        let mut hashes = Vec::with_capacity(live.len());
        resolve.hashes(&live, &mut hashes);
        for (&e, &h) in live.iter().zip(&hashes) {
            self.place(mix(h, seed), e);
        }
    }

    /// Every entry, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = u32> + '_ {
        self.tags.iter().zip(&self.entries).flat_map(|(t, e)| {
            t.iter()
                .zip(e.iter())
                .filter(|(&t, _)| t > TOMB)
                .map(|(_, &e)| e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn the_table_agrees_with_a_map_through_inserts_moves_and_erases() {
        // entries are indexes into `hashes`; the table keys them by the hash stored there
        struct R<'a>(&'a [u64]);
        impl Resolve for R<'_> {
            fn hash(&self, e: u32) -> u64 {
                self.0[e as usize]
            }
        }
        let mut hashes: Vec<u64> = Vec::new();
        let mut t = HashTable::default();
        let mut want: HashMap<u64, u32> = HashMap::new();
        let mut x = 0x1234_5678_u64;
        let seed = 0x9e37;
        for step in 0..200_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // few distinct hashes, so that erases and re-inserts hit the same groups
            let h = x % 5000;
            match (t.find(h, seed, &R(&hashes)), want.get(&h).copied()) {
                (Some((pos, e)), Some(w)) => {
                    assert_eq!(e, w);
                    if step % 3 == 0 {
                        t.set(pos, e);
                    } else {
                        t.erase(pos);
                        want.remove(&h);
                    }
                }
                (None, None) => {
                    hashes.push(h);
                    let e = (hashes.len() - 1) as u32;
                    if step % 2 == 0 {
                        t.insert_new(h, e, seed, &R(&hashes));
                    } else {
                        match t.find_or_vacant(h, seed, &R(&hashes)) {
                            Err(pos) => t.insert_at(pos, h, e, seed),
                            Ok(found) => panic!("step {step}: hash {h} found at {found:?}"),
                        }
                    }
                    want.insert(h, e);
                }
                (got, w) => panic!("step {step}: hash {h}: table {got:?}, map {w:?}"),
            }
            assert_eq!(t.len(), want.len());
        }
        let mut got: Vec<u32> = t.entries().collect();
        got.sort_unstable();
        let mut w: Vec<u32> = want.values().copied().collect();
        w.sort_unstable();
        assert_eq!(got, w);
    }

    #[test]
    fn a_table_past_the_small_size_rehashes_by_resolving() {
        struct R<'a>(&'a [u64]);
        impl Resolve for R<'_> {
            fn hash(&self, e: u32) -> u64 {
                self.0[e as usize]
            }
        }
        // enough entries that the table outgrows SMALL groups (the test limit) and rehashes past it
        let n = SMALL * GROUP * 7 / 8 + 10_000;
        let hashes: Vec<u64> = (0..n as u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5555)
            .collect();
        let seed = 0x1234;
        let mut t = HashTable::default();
        for (e, &h) in hashes.iter().enumerate() {
            match t.find_or_vacant(h, seed, &R(&hashes)) {
                Err(pos) => t.insert_at(pos, h, e as u32, seed),
                Ok(found) => panic!("hash {h} found at {found:?}"),
            }
        }
        assert!(t.tags.len() > SMALL);
        assert_eq!(t.len(), n);
        for (e, &h) in hashes.iter().enumerate().step_by(7) {
            assert_eq!(t.find(h, seed, &R(&hashes)).map(|f| f.1), Some(e as u32));
        }
        assert_eq!(t.find(0xdead_beef, seed, &R(&hashes)), None);
    }

    #[test]
    fn the_arena_keeps_at_most_an_eighth_spare() {
        let mut a: Arena<u64> = Arena::default();
        for i in 0..100_000u64 {
            a.push(i * 3);
            assert!(a.capacity() <= (a.len() + a.len() / 8).max(a.len() + 1024));
        }
        assert_eq!(a.len(), 100_000);
        assert_eq!(a[77_777], 77_777 * 3);
        a[5] = 7;
        assert_eq!(a[5], 7);
    }
}
