//! A small JSON parser into the generic value RouterEvents are read from, mirrored by
//! ts/fallback/json.ts so that both implementations accept the same texts and reject the rest with
//! the same message (`<what> at byte <offset>`).
//!
//! It accepts what serde_json accepts into a `Value`: RFC 8259 JSON in UTF-8, whitespace around
//! tokens, repeated object keys (the last wins), invalid \u surrogates rejected. Integers without
//! fraction or exponent that fit in u64 are exact; every other number (negative, fractional,
//! exponent, `-0`, beyond u64) is kept as a non-integer, whatever its size.

use std::collections::HashMap;

/// A decoded generic value: enough structure to read a RouterEvent from msgpack or JSON alike.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    U64(u64),
    Other,
    Str(String),
    Arr(Vec<Val>),
    Obj(Vec<(String, Val)>),
}

impl Val {
    pub fn get(&self, key: &str) -> Option<&Val> {
        match self {
            // the last of repeated keys wins
            Val::Obj(kv) => kv.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// Why a text is not JSON: the message both implementations give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError(pub String);

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
    max_depth: u32,
}

/// More digits than u64::MAX's 20 (without leading zeros) cannot fit.
const U64_MAX_DIGITS: usize = 20;

impl Parser<'_> {
    fn fail<T>(&self, what: &str) -> Result<T, JsonError> {
        Err(JsonError(format!("{what} at byte {}", self.i)))
    }

    fn at(&self, i: usize) -> Option<u8> {
        self.b.get(i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.at(self.i) {
            self.i += 1;
        }
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        if self.i + 4 > self.b.len() {
            return self.fail("short \\u escape");
        }
        let mut v = 0u32;
        for _ in 0..4 {
            let c = self.b[self.i];
            self.i += 1;
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'A'..=b'F' => c - b'A' + 10,
                b'a'..=b'f' => c - b'a' + 10,
                _ => return self.fail("invalid \\u escape"),
            };
            v = v * 16 + d as u32;
        }
        Ok(v)
    }

    /// At the opening quote. The text is valid UTF-8 and a segment ends only at an ASCII byte, so
    /// each segment is valid UTF-8 too.
    fn string(&mut self) -> Result<String, JsonError> {
        self.i += 1;
        let mut out = String::new();
        let mut start = self.i;
        loop {
            let Some(c) = self.at(self.i) else {
                return self.fail("unterminated string");
            };
            if c == b'"' {
                out.push_str(&String::from_utf8_lossy(&self.b[start..self.i]));
                self.i += 1;
                return Ok(out);
            }
            if c < 0x20 {
                return self.fail("control character in string");
            }
            if c != b'\\' {
                self.i += 1;
                continue;
            }
            out.push_str(&String::from_utf8_lossy(&self.b[start..self.i]));
            self.i += 1;
            let Some(e) = self.at(self.i) else {
                return self.fail("unterminated escape");
            };
            self.i += 1;
            match e {
                b'"' => out.push('"'),
                b'\\' => out.push('\\'),
                b'/' => out.push('/'),
                b'b' => out.push('\u{8}'),
                b'f' => out.push('\u{c}'),
                b'n' => out.push('\n'),
                b'r' => out.push('\r'),
                b't' => out.push('\t'),
                b'u' => {
                    let u = self.hex4()?;
                    if (0xd800..=0xdbff).contains(&u) {
                        if self.at(self.i) != Some(b'\\') || self.at(self.i + 1) != Some(b'u') {
                            return self.fail("lone leading surrogate");
                        }
                        self.i += 2;
                        let l = self.hex4()?;
                        if !(0xdc00..=0xdfff).contains(&l) {
                            return self.fail("invalid trailing surrogate");
                        }
                        let c = 0x10000 + ((u - 0xd800) << 10) + (l - 0xdc00);
                        out.push(char::from_u32(c).unwrap_or('\u{fffd}'));
                    } else if (0xdc00..=0xdfff).contains(&u) {
                        return self.fail("lone trailing surrogate");
                    } else {
                        out.push(char::from_u32(u).unwrap_or('\u{fffd}'));
                    }
                }
                _ => return self.fail("invalid escape"),
            }
            start = self.i;
        }
    }

    fn digits(&mut self) -> usize {
        let s = self.i;
        while let Some(b'0'..=b'9') = self.at(self.i) {
            self.i += 1;
        }
        self.i - s
    }

    fn number(&mut self) -> Result<Val, JsonError> {
        let s = self.i;
        let neg = self.at(self.i) == Some(b'-');
        if neg {
            self.i += 1;
        }
        let int_start = self.i;
        let nd = self.digits();
        if nd == 0 {
            return self.fail("invalid number");
        }
        if nd > 1 && self.b[int_start] == b'0' {
            return self.fail("leading zero");
        }
        let mut integer = true;
        if self.at(self.i) == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return self.fail("invalid fraction");
            }
            integer = false;
        }
        if let Some(b'e' | b'E') = self.at(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.at(self.i) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return self.fail("invalid exponent");
            }
            integer = false;
        }
        if !integer || neg || nd > U64_MAX_DIGITS {
            return Ok(Val::Other);
        }
        let text = std::str::from_utf8(&self.b[s..self.i]).unwrap_or("");
        Ok(text.parse::<u64>().map(Val::U64).unwrap_or(Val::Other))
    }

    fn value(&mut self, level: u32) -> Result<Val, JsonError> {
        if level > self.max_depth {
            return self.fail("nested too deeply");
        }
        self.ws();
        let Some(c) = self.at(self.i) else {
            return self.fail("unexpected end");
        };
        match c {
            b'{' => {
                self.i += 1;
                let mut entries: Vec<(String, Val)> = Vec::new();
                let mut index: HashMap<String, usize> = HashMap::new();
                self.ws();
                if self.at(self.i) == Some(b'}') {
                    self.i += 1;
                    return Ok(Val::Obj(entries));
                }
                loop {
                    self.ws();
                    if self.at(self.i) != Some(b'"') {
                        return self.fail("expected a key");
                    }
                    let key = self.string()?;
                    self.ws();
                    if self.at(self.i) != Some(b':') {
                        return self.fail("expected ':'");
                    }
                    self.i += 1;
                    let v = self.value(level + 1)?;
                    // a repeated key replaces the earlier value in place (serde_json's map)
                    match index.get(&key) {
                        Some(&at) => entries[at].1 = v,
                        None => {
                            index.insert(key.clone(), entries.len());
                            entries.push((key, v));
                        }
                    }
                    self.ws();
                    match self.at(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Val::Obj(entries));
                        }
                        _ => return self.fail("expected ',' or '}'"),
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.at(self.i) == Some(b']') {
                    self.i += 1;
                    return Ok(Val::Arr(items));
                }
                loop {
                    items.push(self.value(level + 1)?);
                    self.ws();
                    match self.at(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Val::Arr(items));
                        }
                        _ => return self.fail("expected ',' or ']'"),
                    }
                }
            }
            b'"' => Ok(Val::Str(self.string()?)),
            b'-' | b'0'..=b'9' => self.number(),
            _ => {
                for (word, v) in [
                    (&b"null"[..], Val::Null),
                    (b"true", Val::Other),
                    (b"false", Val::Other),
                ] {
                    if self.b[self.i..].starts_with(word) {
                        self.i += word.len();
                        return Ok(v);
                    }
                }
                self.fail("unexpected character")
            }
        }
    }
}

/// Parses JSON bytes into a Val; the top value is level 1, deeper than `max_depth` is an error.
pub fn parse_json(bytes: &[u8], max_depth: u32) -> Result<Val, JsonError> {
    // serde_json accepts no byte-order mark; the parser rejects it as an unexpected character
    if std::str::from_utf8(bytes).is_err() {
        return Err(JsonError("invalid UTF-8".into()));
    }
    let mut p = Parser {
        b: bytes,
        i: 0,
        max_depth,
    };
    let v = p.value(1)?;
    p.ws();
    if p.i != bytes.len() {
        return p.fail("trailing characters");
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        parse_json(s.as_bytes(), 64).unwrap_err().0
    }

    #[test]
    fn values_and_exact_integers() {
        let v = parse_json(br#" {"a": [1, 18446744073709551615, 18446744073709551616, -1, 1.0, 1e2, null, true, "x\u00e9\ud83d\ude00"], "a": 2} "#, 64).unwrap();
        assert_eq!(v, Val::Obj(vec![("a".into(), Val::U64(2))]));
        let v = parse_json(br#"[1, 18446744073709551615, 18446744073709551616, -1, 1.0, 1e400, null, true, "x\u00e9\ud83d\ude00", 123456789012345678901234567890]"#, 64).unwrap();
        let Val::Arr(a) = v else { panic!() };
        assert_eq!(a[0], Val::U64(1));
        assert_eq!(a[1], Val::U64(u64::MAX));
        assert_eq!(a[2], Val::Other);
        assert_eq!(a[3], Val::Other);
        assert_eq!(a[5], Val::Other);
        assert_eq!(a[8], Val::Str("xé😀".into()));
        assert_eq!(a[9], Val::Other);
    }

    #[test]
    fn errors_name_the_byte() {
        assert_eq!(err(""), "unexpected end at byte 0");
        assert_eq!(err("[1,"), "unexpected end at byte 3");
        assert_eq!(err("01"), "leading zero at byte 2");
        assert_eq!(err("\"é\u{1}\""), "control character in string at byte 3");
        assert_eq!(err("{\"a\" 1}"), "expected ':' at byte 5");
        assert_eq!(err("[1 2]"), "expected ',' or ']' at byte 3");
        assert_eq!(err("\"\\ud800\""), "lone leading surrogate at byte 7");
        assert_eq!(err("1 x"), "trailing characters at byte 2");
        assert_eq!(err(&"[".repeat(65)), "nested too deeply at byte 64");
        assert_eq!(parse_json(b"\"\xff\"", 64).unwrap_err().0, "invalid UTF-8");
    }
}
