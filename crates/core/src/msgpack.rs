//! A small msgpack reader that never trusts the input, and a writer that emits the minimal forms
//! rmp-serde writes for named structs.
//!
//! The reader is a cursor over a borrowed slice: strings and bins are returned as sub-slices, nothing
//! is allocated from a length header (a header is checked against the bytes that remain before it is
//! believed), and every value is read at an explicit nesting level so that depth is bounded (SPEC 2.2).

/// The batch is level 1; a value deeper than this makes the batch malformed.
pub const MAX_DEPTH: u32 = 64;

/// The input is not a well-formed msgpack value within the limits (truncated, reserved marker, a
/// length header larger than what follows, or nesting deeper than `MAX_DEPTH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

pub type Res<T> = Result<T, Malformed>;

/// One decoded value header. Scalars are complete; arrays and maps give their element count and the
/// caller reads (or skips) the elements at `level + 1`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Head<'a> {
    Nil,
    Bool(bool),
    /// Any msgpack integer whose value is >= 0 (whatever its marker width or signedness).
    Uint(u64),
    /// A msgpack integer whose value is < 0.
    Neg(i64),
    /// float32 or float64: never an integer (SPEC 2.2 rule 1).
    Float,
    Str(&'a [u8]),
    Bin(&'a [u8]),
    Array(u32),
    Map(u32),
    Ext,
}

pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    #[inline]
    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        if n > self.remaining() {
            return Err(Malformed);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    #[inline(always)]
    fn fixed<const N: usize>(&mut self) -> Res<[u8; N]> {
        match self.buf.get(self.pos..self.pos + N) {
            Some(s) => {
                self.pos += N;
                let mut a = [0u8; N];
                a.copy_from_slice(s);
                Ok(a)
            }
            None => Err(Malformed),
        }
    }

    #[inline(always)]
    fn u8(&mut self) -> Res<u8> {
        Ok(self.fixed::<1>()?[0])
    }

    #[inline(always)]
    fn u16(&mut self) -> Res<u16> {
        Ok(u16::from_be_bytes(self.fixed()?))
    }

    #[inline(always)]
    fn u32(&mut self) -> Res<u32> {
        Ok(u32::from_be_bytes(self.fixed()?))
    }

    #[inline(always)]
    fn u64(&mut self) -> Res<u64> {
        Ok(u64::from_be_bytes(self.fixed()?))
    }

    /// Fast path for token ids, the bulk of every batch: appends up to `n` consecutive unsigned
    /// integers of at most 32 bits (fixint, uint8/16/32) as u32 little-endian to `out`, and returns
    /// how many it consumed; it stops early (consuming nothing more) at any other value or near the
    /// end of the buffer, where the caller continues value by value. Branch-free in the common case,
    /// because token widths alternate unpredictably between uint16 and uint32.
    #[inline]
    pub fn small_uints_le(&mut self, n: usize, out: &mut Vec<u8>) -> usize {
        let buf = self.buf;
        let mut p = self.pos;
        let mut k = 0;
        out.reserve(n * 4);
        while k < n && p + 5 <= buf.len() {
            let m = buf[p];
            // payload width from the marker arithmetically (fixint 0; 0xcc, 0xcd, 0xce → 1, 2, 4), so
            // the next position does not wait on a table lookup
            let small = m < 0x80;
            if !small && !(0xcc..=0xce).contains(&m) {
                break;
            }
            let w = if small { 0 } else { 1u32 << (m & 3) };
            let raw = u32::from_be_bytes([buf[p + 1], buf[p + 2], buf[p + 3], buf[p + 4]]) as u64;
            let v = if small {
                m as u32
            } else {
                (raw >> (32 - 8 * w)) as u32
            };
            out.extend_from_slice(&v.to_le_bytes());
            p += 1 + w as usize;
            k += 1;
        }
        self.pos = p;
        k
    }

    /// Consumes a fixstr equal to `key` (a known short map key) and returns true; otherwise consumes
    /// nothing. The length is a compile-time constant, so the comparison is inlined.
    #[inline(always)]
    pub fn fixstr_key<const N: usize>(&mut self, key: &[u8; N]) -> bool {
        const { assert!(N < 32) };
        let p = self.pos;
        if self.buf.get(p) == Some(&(0xa0 | N as u8))
            && self.buf.get(p + 1..p + 1 + N) == Some(&key[..])
        {
            self.pos = p + 1 + N;
            true
        } else {
            false
        }
    }

    /// Fast path for the most common value in a batch, a token id: an unsigned integer of up to 32
    /// bits. Returns None (consuming nothing) when the next value is anything else.
    #[inline(always)]
    pub fn small_uint(&mut self) -> Option<u32> {
        let m = *self.buf.get(self.pos)?;
        let (v, n) = match m {
            0x00..=0x7f => (m as u32, 1),
            0xcc => (*self.buf.get(self.pos + 1)? as u32, 2),
            0xcd => (
                u16::from_be_bytes(self.buf.get(self.pos + 1..self.pos + 3)?.try_into().ok()?)
                    as u32,
                3,
            ),
            0xce => (
                u32::from_be_bytes(self.buf.get(self.pos + 1..self.pos + 5)?.try_into().ok()?),
                5,
            ),
            _ => return None,
        };
        self.pos += n;
        Some(v)
    }

    #[inline]
    fn array_head(&self, n: u64) -> Res<Head<'a>> {
        // every element needs at least one byte
        if n as usize > self.remaining() {
            return Err(Malformed);
        }
        Ok(Head::Array(n as u32))
    }

    #[inline]
    fn map_head(&self, n: u64) -> Res<Head<'a>> {
        if (n as usize).saturating_mul(2) > self.remaining() {
            return Err(Malformed);
        }
        Ok(Head::Map(n as u32))
    }

    fn ext(&mut self, len: usize) -> Res<Head<'a>> {
        self.take(1 + len)?; // type byte + data
        Ok(Head::Ext)
    }

    /// Reads the header of the value at `level` (the batch is level 1).
    #[inline]
    pub fn head(&mut self, level: u32) -> Res<Head<'a>> {
        if level > MAX_DEPTH {
            return Err(Malformed);
        }
        let m = self.u8()?;
        Ok(match m {
            0x00..=0x7f => Head::Uint(m as u64),
            0x80..=0x8f => return self.map_head((m & 0x0f) as u64),
            0x90..=0x9f => return self.array_head((m & 0x0f) as u64),
            0xa0..=0xbf => Head::Str(self.take((m & 0x1f) as usize)?),
            0xc0 => Head::Nil,
            0xc1 => return Err(Malformed),
            0xc2 => Head::Bool(false),
            0xc3 => Head::Bool(true),
            0xc4 => {
                let n = self.u8()? as usize;
                Head::Bin(self.take(n)?)
            }
            0xc5 => {
                let n = self.u16()? as usize;
                Head::Bin(self.take(n)?)
            }
            0xc6 => {
                let n = self.u32()? as usize;
                Head::Bin(self.take(n)?)
            }
            0xc7 => {
                let n = self.u8()? as usize;
                return self.ext(n);
            }
            0xc8 => {
                let n = self.u16()? as usize;
                return self.ext(n);
            }
            0xc9 => {
                let n = self.u32()? as usize;
                return self.ext(n);
            }
            0xca => {
                self.take(4)?;
                Head::Float
            }
            0xcb => {
                self.take(8)?;
                Head::Float
            }
            0xcc => Head::Uint(self.u8()? as u64),
            0xcd => Head::Uint(self.u16()? as u64),
            0xce => Head::Uint(self.u32()? as u64),
            0xcf => Head::Uint(self.u64()?),
            0xd0 => signed(self.u8()? as i8 as i64),
            0xd1 => signed(self.u16()? as i16 as i64),
            0xd2 => signed(self.u32()? as i32 as i64),
            0xd3 => signed(self.u64()? as i64),
            0xd4 => return self.ext(1),
            0xd5 => return self.ext(2),
            0xd6 => return self.ext(4),
            0xd7 => return self.ext(8),
            0xd8 => return self.ext(16),
            0xd9 => {
                let n = self.u8()? as usize;
                Head::Str(self.take(n)?)
            }
            0xda => {
                let n = self.u16()? as usize;
                Head::Str(self.take(n)?)
            }
            0xdb => {
                let n = self.u32()? as usize;
                Head::Str(self.take(n)?)
            }
            0xdc => {
                let n = self.u16()? as u64;
                return self.array_head(n);
            }
            0xdd => {
                let n = self.u32()? as u64;
                return self.array_head(n);
            }
            0xde => {
                let n = self.u16()? as u64;
                return self.map_head(n);
            }
            0xdf => {
                let n = self.u32()? as u64;
                return self.map_head(n);
            }
            0xe0..=0xff => Head::Neg(m as i8 as i64),
        })
    }

    /// Skips the value at `level`, checking it whole (structure and depth).
    pub fn skip(&mut self, level: u32) -> Res<()> {
        match self.head(level)? {
            Head::Array(n) => self.skip_n(n as u64, level + 1),
            Head::Map(n) => self.skip_n(2 * n as u64, level + 1),
            _ => Ok(()),
        }
    }

    /// Skips `n` consecutive values at `level`.
    pub fn skip_n(&mut self, n: u64, level: u32) -> Res<()> {
        for _ in 0..n {
            self.skip(level)?;
        }
        Ok(())
    }
}

fn signed(v: i64) -> Head<'static> {
    if v >= 0 {
        Head::Uint(v as u64)
    } else {
        Head::Neg(v)
    }
}

/// Appends msgpack in the minimal forms rmp-serde uses.
pub struct Writer<'b> {
    pub buf: &'b mut Vec<u8>,
}

impl<'b> Writer<'b> {
    pub fn new(buf: &'b mut Vec<u8>) -> Self {
        Writer { buf }
    }

    #[inline]
    pub fn uint(&mut self, v: u64) {
        let b = &mut *self.buf;
        if v < 0x80 {
            b.push(v as u8);
        } else if v <= 0xff {
            b.extend_from_slice(&[0xcc, v as u8]);
        } else if v <= 0xffff {
            b.push(0xcd);
            b.extend_from_slice(&(v as u16).to_be_bytes());
        } else if v <= 0xffff_ffff {
            b.push(0xce);
            b.extend_from_slice(&(v as u32).to_be_bytes());
        } else {
            b.push(0xcf);
            b.extend_from_slice(&v.to_be_bytes());
        }
    }

    pub fn nil(&mut self) {
        self.buf.push(0xc0);
    }

    pub fn opt_uint(&mut self, v: Option<u64>) {
        match v {
            Some(v) => self.uint(v),
            None => self.nil(),
        }
    }

    #[inline]
    pub fn str(&mut self, s: &str) {
        let n = s.len();
        let b = &mut *self.buf;
        if n < 32 {
            b.push(0xa0 | n as u8);
        } else if n <= 0xff {
            b.extend_from_slice(&[0xd9, n as u8]);
        } else if n <= 0xffff {
            b.push(0xda);
            b.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            b.push(0xdb);
            b.extend_from_slice(&(n as u32).to_be_bytes());
        }
        b.extend_from_slice(s.as_bytes());
    }

    pub fn bin(&mut self, data: &[u8]) {
        let n = data.len();
        let b = &mut *self.buf;
        if n <= 0xff {
            b.extend_from_slice(&[0xc4, n as u8]);
        } else if n <= 0xffff {
            b.push(0xc5);
            b.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            b.push(0xc6);
            b.extend_from_slice(&(n as u32).to_be_bytes());
        }
        b.extend_from_slice(data);
    }

    pub fn array(&mut self, n: usize) {
        let b = &mut *self.buf;
        if n < 16 {
            b.push(0x90 | n as u8);
        } else if n <= 0xffff {
            b.push(0xdc);
            b.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            b.push(0xdd);
            b.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }

    pub fn map(&mut self, n: usize) {
        let b = &mut *self.buf;
        if n < 16 {
            b.push(0x80 | n as u8);
        } else if n <= 0xffff {
            b.push(0xde);
            b.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            b.push(0xdf);
            b.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_integer_widths() {
        let cases: &[(u64, &[u8])] = &[
            (0, &[0x00]),
            (127, &[0x7f]),
            (128, &[0xcc, 0x80]),
            (255, &[0xcc, 0xff]),
            (256, &[0xcd, 0x01, 0x00]),
            (65536, &[0xce, 0, 1, 0, 0]),
            (1 << 32, &[0xcf, 0, 0, 0, 1, 0, 0, 0, 0]),
        ];
        for (v, want) in cases {
            let mut buf = Vec::new();
            Writer::new(&mut buf).uint(*v);
            assert_eq!(&buf[..], *want, "{v}");
            assert_eq!(Reader::new(&buf).head(1), Ok(Head::Uint(*v)));
        }
    }

    #[test]
    fn header_claims_are_checked_before_use() {
        // array32 claiming 4 billion elements with nothing after it
        assert_eq!(
            Reader::new(&[0xdd, 0xff, 0xff, 0xff, 0xff]).head(1),
            Err(Malformed)
        );
        // str32 claiming more bytes than remain
        assert_eq!(
            Reader::new(&[0xdb, 0, 0, 1, 0, b'a']).head(1),
            Err(Malformed)
        );
        // map16 of 2 pairs needs at least 4 bytes
        assert_eq!(Reader::new(&[0xde, 0, 2, 1, 2, 3]).head(1), Err(Malformed));
        assert_eq!(Reader::new(&[0xc1]).head(1), Err(Malformed));
    }

    #[test]
    fn depth_is_bounded() {
        // 63 nested arrays around a nil: the nil sits at level 64
        let mut ok = vec![0x91u8; 63];
        ok.push(0xc0);
        assert_eq!(Reader::new(&ok).skip(1), Ok(()));
        let mut deep = vec![0x91u8; 64];
        deep.push(0xc0);
        assert_eq!(Reader::new(&deep).skip(1), Err(Malformed));
    }

    #[test]
    fn signed_markers_with_non_negative_values_are_uints() {
        assert_eq!(Reader::new(&[0xd0, 0x05]).head(1), Ok(Head::Uint(5)));
        assert_eq!(Reader::new(&[0xd0, 0xff]).head(1), Ok(Head::Neg(-1)));
        assert_eq!(Reader::new(&[0xff]).head(1), Ok(Head::Neg(-1)));
    }
}
