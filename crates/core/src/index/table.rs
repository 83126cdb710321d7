//! Storage for the radix index: a chunked arena (no growth slack beyond one chunk) and the
//! per-worker table of block hash → holder entry that stores only the u32 entry, reading each
//! entry's block hash back through the index (`resolve`).

use std::ops::{Index, IndexMut};

/// Elements per arena chunk (a power of two).
const CHUNK_SHIFT: u32 = 14;
const CHUNK: usize = 1 << CHUNK_SHIFT;

/// A vector addressed by u32 in chunks of `CHUNK`: growing never copies more than the last chunk
/// and leaves at most one chunk of spare capacity (a `Vec` doubling leaves up to half).
#[derive(Debug)]
pub(super) struct Arena<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Arena<T> {
    fn default() -> Self {
        Arena {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Arena<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn push(&mut self, v: T) {
        match self.chunks.last_mut() {
            Some(c) if c.len() < CHUNK => c.push(v),
            _ => {
                let mut c = Vec::with_capacity(if self.chunks.is_empty() { 4 } else { CHUNK });
                c.push(v);
                self.chunks.push(c);
            }
        }
        self.len += 1;
    }

    /// Heap bytes held (element storage and the chunk table).
    pub fn heap_bytes(&self) -> usize {
        self.chunks
            .iter()
            .map(|c| c.capacity() * std::mem::size_of::<T>())
            .sum::<usize>()
            + self.chunks.capacity() * std::mem::size_of::<Vec<T>>()
    }

    /// Element capacity.
    pub fn capacity(&self) -> usize {
        self.chunks.iter().map(|c| c.capacity()).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.chunks.iter().flatten()
    }
}

impl<T> Index<usize> for Arena<T> {
    type Output = T;
    #[inline]
    fn index(&self, i: usize) -> &T {
        &self.chunks[i >> CHUNK_SHIFT][i & (CHUNK - 1)]
    }
}

impl<T> IndexMut<usize> for Arena<T> {
    #[inline]
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut self.chunks[i >> CHUNK_SHIFT][i & (CHUNK - 1)]
    }
}

/// Slots per group: 12 tags and 12 entries fill one 64-byte cache line.
const GROUP: usize = 12;
const EMPTY: u8 = 0;
const TOMB: u8 = 1;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Group {
    tags: [u8; GROUP],
    entries: [u32; GROUP],
}

const EMPTY_GROUP: Group = Group {
    tags: [EMPTY; GROUP],
    entries: [0; GROUP],
};

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group").field("tags", &self.tags).finish()
    }
}

/// A set of u32 entries keyed by a u64 block hash that is not stored: `resolve(entry)` gives it
/// back. Open addressing over groups of 12 slots (one cache line: a lookup usually reads one line),
/// with a 7-bit tag per slot so that `resolve` runs almost only on the entry sought. Any group
/// count (not only powers of two), grown by 1.5x at 7/8 full, so that it is 58-88% full.
/// Deletion leaves a tombstone only in a group without empty slots (a probe never went past a
/// group that has one).
#[derive(Debug, Default)]
pub(super) struct HashTable {
    groups: Vec<Group>,
    len: u32,
    /// Empty slots that may still be filled before a rehash (keeps 1/8 of the slots empty).
    growth_left: u32,
}

#[inline]
fn mix(h: u64, seed: u64) -> u64 {
    let mut z = (h ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 32)).wrapping_mul(0xd6e8_feb8_6659_fd93);
    z ^ (z >> 32)
}

#[inline]
fn tag_of(z: u64) -> u8 {
    (z as u8) | 0x80
}

impl HashTable {
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn heap_bytes(&self) -> usize {
        self.groups.capacity() * std::mem::size_of::<Group>()
    }

    /// Slots (for estimates).
    pub fn slots(&self) -> usize {
        self.groups.capacity() * GROUP
    }

    #[inline]
    fn home(&self, z: u64) -> usize {
        ((z as u128 * self.groups.len() as u128) >> 64) as usize
    }

    /// The position (group * GROUP + slot) and entry whose resolved hash is `h`.
    #[inline]
    pub fn find(&self, h: u64, seed: u64, resolve: impl Fn(u32) -> u64) -> Option<(usize, u32)> {
        if self.len == 0 {
            return None;
        }
        let z = mix(h, seed);
        let tag = tag_of(z);
        let n = self.groups.len();
        let mut g = self.home(z);
        loop {
            let grp = &self.groups[g];
            for i in 0..GROUP {
                if grp.tags[i] == tag && resolve(grp.entries[i]) == h {
                    return Some((g * GROUP + i, grp.entries[i]));
                }
            }
            if grp.tags.contains(&EMPTY) {
                return None;
            }
            g += 1;
            if g == n {
                g = 0;
            }
        }
    }

    /// Replaces the entry at `pos` by one that resolves to the same hash.
    #[inline]
    pub fn set(&mut self, pos: usize, entry: u32) {
        self.groups[pos / GROUP].entries[pos % GROUP] = entry;
    }

    /// Removes the entry at `pos`.
    pub fn erase(&mut self, pos: usize) {
        let grp = &mut self.groups[pos / GROUP];
        if grp.tags.contains(&EMPTY) {
            grp.tags[pos % GROUP] = EMPTY;
            self.growth_left += 1;
        } else {
            grp.tags[pos % GROUP] = TOMB;
        }
        self.len -= 1;
    }

    /// Adds an entry whose hash `h` is not in the table.
    pub fn insert_new(&mut self, h: u64, entry: u32, seed: u64, resolve: impl Fn(u32) -> u64) {
        if self.growth_left == 0 {
            self.rehash(seed, &resolve);
        }
        let z = mix(h, seed);
        self.place(z, entry);
        self.len += 1;
    }

    fn place(&mut self, z: u64, entry: u32) {
        let n = self.groups.len();
        let mut g = self.home(z);
        loop {
            let grp = &mut self.groups[g];
            if let Some(i) = grp.tags.iter().position(|&t| t == EMPTY || t == TOMB) {
                if grp.tags[i] == EMPTY {
                    self.growth_left -= 1;
                }
                grp.tags[i] = tag_of(z);
                grp.entries[i] = entry;
                return;
            }
            g += 1;
            if g == n {
                g = 0;
            }
        }
    }

    /// Rebuilds the table for its entries and one more, at 7/12 full (or empty).
    fn rehash(&mut self, seed: u64, resolve: &impl Fn(u32) -> u64) {
        let live = self.len as usize + 1;
        let groups = live.div_ceil(7).max(1);
        let old = std::mem::replace(&mut self.groups, vec![EMPTY_GROUP; groups]);
        self.groups.shrink_to_fit();
        self.growth_left = (groups * GROUP - (groups * GROUP).div_ceil(8)) as u32;
        for grp in &old {
            for i in 0..GROUP {
                if grp.tags[i] > TOMB {
                    let e = grp.entries[i];
                    self.place(mix(resolve(e), seed), e);
                }
            }
        }
    }

    /// Every entry, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = u32> + '_ {
        self.groups.iter().flat_map(|g| {
            g.tags
                .iter()
                .zip(g.entries.iter())
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
            let res = |e: u32| hashes[e as usize];
            match (t.find(h, seed, res), want.get(&h).copied()) {
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
                    let res = |e: u32| hashes[e as usize];
                    t.insert_new(h, e, seed, res);
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
    fn the_arena_addresses_across_chunks() {
        let mut a: Arena<u64> = Arena::default();
        for i in 0..(3 * CHUNK as u64 + 5) {
            a.push(i * 3);
        }
        assert_eq!(a.len(), 3 * CHUNK + 5);
        assert_eq!(a[2 * CHUNK + 1], (2 * CHUNK as u64 + 1) * 3);
        a[CHUNK] = 7;
        assert_eq!(a[CHUNK], 7);
        assert!(a.capacity() <= 4 * CHUNK);
    }
}
