//! The common body of the indexer service's `POST /query` read in one pass from the request bytes:
//! `{"token_ids": [u32...], "model_name": "...", "routing_group"?, "lora_name"?, "cache_salt"?,
//! "tenant_id"?}`. It takes only a plainly valid body of those fields (JSON whitespace, each field once,
//! unsigned integer token ids below 2^32 without a leading zero, strings of printable ASCII without
//! escapes, `null` for `lora_name` and `cache_salt`); anything else (an unknown field, an escape, a
//! float, a non-ASCII byte, a syntax error) is refused, and the service's exact reader, whose errors
//! are serde's, answers it. The strings are given as byte ranges of the body.

/// `fields[2k], fields[2k + 1]` of a field that is absent.
pub const FIELD_ABSENT: u32 = u32::MAX;
/// `fields[2k]` of a field given as `null` (`lora_name`, `cache_salt`).
pub const FIELD_NULL: u32 = u32::MAX - 1;
/// Field order in `fields`: model_name, routing_group, lora_name, cache_salt.
pub const FIELD_COUNT: usize = 4;

/// What `scan_query` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Scanned {
    /// A body of the common shape with this many token ids, all written.
    Tokens(usize),
    /// A body of the common shape whose token ids did not fit: this many are needed.
    TooMany(usize),
    /// Anything else: the exact reader answers.
    Other,
}

const F_TOKENS: u32 = 1;
const F_MODEL: u32 = 2;
const F_GROUP: u32 = 4;
const F_LORA: u32 = 8;
const F_SALT: u32 = 16;
const F_TENANT: u32 = 32;

#[inline]
fn is_ws(c: u8) -> bool {
    c == b' ' || c == b'\n' || c == b'\r' || c == b'\t'
}

#[inline]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_ws(b[i]) {
        i += 1
    }
    i
}

/// The closing quote's index of a plain printable-ASCII string starting at `i`, or None.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let rest = b.get(i..)?;
    for (k, &c) in rest.iter().enumerate() {
        if c == b'"' {
            return Some(i + k);
        }
        if !(0x20..=0x7e).contains(&c) || c == b'\\' {
            return None;
        }
    }
    None
}

/// The leading digits of 8 bytes read at once: how many (1..=7) and their value; None when all 8 are
/// digits or the first is not (the byte loop then reads them). A byte is a digit when subtracting '0'
/// leaves it below 10: `x - 0x30..` sets the top bit of a byte below '0' or from 0xBA up, `x + 0x46..`
/// that of a byte from ':' up to 0xB9. A borrow or carry only reaches the bytes above the first
/// non-digit, which are shifted out before the digits are combined.
#[inline]
fn eight_or_fewer_digits(bytes: &[u8]) -> Option<(usize, u64)> {
    let x = u64::from_le_bytes(bytes.try_into().ok()?);
    let sub = x.wrapping_sub(0x3030_3030_3030_3030);
    let add = x.wrapping_add(0x4646_4646_4646_4646);
    let non_digit = (sub | add) & 0x8080_8080_8080_8080;
    let digits = (non_digit.trailing_zeros() / 8) as usize;
    if digits == 0 || digits == 8 {
        return None;
    }
    // the digits' values moved to the top bytes (first digit lowest), then combined in pairs, fours, eight
    let mut v = sub << (8 * (8 - digits));
    v = (v & 0x0F0F_0F0F_0F0F_0F0F).wrapping_mul(2561) >> 8;
    v = (v & 0x00FF_00FF_00FF_00FF).wrapping_mul(6_553_601) >> 16;
    v = (v & 0x0000_FFFF_0000_FFFF).wrapping_mul(42_949_672_960_001) >> 32;
    Some((digits, v))
}

fn field_of(key: &[u8]) -> u32 {
    match key {
        b"token_ids" => F_TOKENS,
        b"model_name" => F_MODEL,
        b"routing_group" => F_GROUP,
        b"lora_name" => F_LORA,
        b"cache_salt" => F_SALT,
        b"tenant_id" => F_TENANT,
        _ => 0,
    }
}

/// Reads a /query body of the common shape: its token ids into `tokens` (as many as fit) and the byte
/// ranges `[start, end)` of model_name, routing_group, lora_name and cache_salt into `fields`
/// ([`FIELD_ABSENT`] twice for a field not given, [`FIELD_NULL`] first for `null`). Never panics.
pub fn scan_query(b: &[u8], tokens: &mut [u32], fields: &mut [u32; 2 * FIELD_COUNT]) -> Scanned {
    match scan(b, tokens, fields) {
        Some(n) if n > tokens.len() => Scanned::TooMany(n),
        Some(n) => Scanned::Tokens(n),
        None => Scanned::Other,
    }
}

fn scan(b: &[u8], tokens: &mut [u32], fields: &mut [u32; 2 * FIELD_COUNT]) -> Option<usize> {
    // ranges are u32 offsets; a body this large is never the common shape (the service's limit is 8 MiB)
    if b.len() >= FIELD_NULL as usize {
        return None;
    }
    fields.fill(FIELD_ABSENT);
    let len = b.len();
    let at = |i: usize| b.get(i).copied();
    let mut i = skip_ws(b, 0);
    if at(i)? != b'{' {
        return None;
    }
    i = skip_ws(b, i + 1);
    if at(i)? == b'}' {
        return None;
    }
    let mut seen = 0u32;
    let mut n = 0usize;
    loop {
        if at(i)? != b'"' {
            return None;
        }
        let ke = string_end(b, i + 1)?;
        let f = field_of(&b[i + 1..ke]);
        if f == 0 || seen & f != 0 {
            return None;
        }
        seen |= f;
        i = skip_ws(b, ke + 1);
        if at(i)? != b':' {
            return None;
        }
        i = skip_ws(b, i + 1);
        if f == F_TOKENS {
            if at(i)? != b'[' {
                return None;
            }
            i = skip_ws(b, i + 1);
            if at(i)? == b']' {
                i += 1;
            } else {
                loop {
                    // one token id: digits without a leading zero, at most 10 of them, below 2^32
                    let first = i;
                    let mut v: u64 = 0;
                    if let Some((digits, value)) = b.get(i..i + 8).and_then(eight_or_fewer_digits) {
                        v = value;
                        i += digits;
                    }
                    while i < len {
                        let d = b[i].wrapping_sub(b'0');
                        if d > 9 {
                            break;
                        }
                        v = v * 10 + d as u64;
                        i += 1;
                        if i - first > 10 {
                            return None;
                        }
                    }
                    let digits = i - first;
                    if digits == 0 || v > u32::MAX as u64 || (digits > 1 && b[first] == b'0') {
                        return None;
                    }
                    if let Some(slot) = tokens.get_mut(n) {
                        *slot = v as u32;
                    }
                    n += 1;
                    i = skip_ws(b, i);
                    match at(i)? {
                        b',' => i = skip_ws(b, i + 1),
                        b']' => {
                            i += 1;
                            break;
                        }
                        _ => return None,
                    }
                }
            }
        } else {
            let slot = match f {
                F_MODEL => Some(0),
                F_GROUP => Some(1),
                F_LORA => Some(2),
                F_SALT => Some(3),
                _ => None,
            };
            if at(i)? == b'"' {
                let e = string_end(b, i + 1)?;
                if let Some(k) = slot {
                    fields[2 * k] = (i + 1) as u32;
                    fields[2 * k + 1] = e as u32;
                }
                i = e + 1;
            } else if (f == F_LORA || f == F_SALT) && b[i..].starts_with(b"null") {
                if let Some(k) = slot {
                    fields[2 * k] = FIELD_NULL;
                    fields[2 * k + 1] = FIELD_NULL;
                }
                i += 4;
            } else {
                return None;
            }
        }
        i = skip_ws(b, i);
        match at(i)? {
            b',' => i = skip_ws(b, i + 1),
            b'}' => break,
            _ => return None,
        }
    }
    if skip_ws(b, i + 1) != len || seen & (F_TOKENS | F_MODEL) != F_TOKENS | F_MODEL {
        return None;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A field as read: absent (None), null (Some(None)) or a string.
    type Field = Option<Option<String>>;

    fn run(body: &str) -> Option<(Vec<u32>, Vec<Field>)> {
        let mut tokens = [0u32; 64];
        let mut fields = [0u32; 2 * FIELD_COUNT];
        match scan_query(body.as_bytes(), &mut tokens, &mut fields) {
            Scanned::Tokens(n) => {
                let f = (0..FIELD_COUNT)
                    .map(|k| match fields[2 * k] {
                        FIELD_ABSENT => None,
                        FIELD_NULL => Some(None),
                        s => Some(Some(
                            body[s as usize..fields[2 * k + 1] as usize].to_string(),
                        )),
                    })
                    .collect();
                Some((tokens[..n].to_vec(), f))
            }
            Scanned::TooMany(_) => panic!("too many"),
            Scanned::Other => None,
        }
    }

    #[test]
    fn reads_the_common_shape() {
        let (t, f) = run(r#" { "model_name" : "llama" , "token_ids" : [ 1 , 20,4294967295 ] ,"lora_name":null,"cache_salt":"s","tenant_id":"x"} "#).unwrap();
        assert_eq!(t, vec![1, 20, 4_294_967_295]);
        assert_eq!(
            f,
            vec![
                Some(Some("llama".into())),
                None,
                Some(None),
                Some(Some("s".into()))
            ]
        );
        let (t, f) = run(r#"{"token_ids":[],"model_name":"","routing_group":"g"}"#).unwrap();
        assert!(t.is_empty());
        assert_eq!(f[0], Some(Some(String::new())));
        assert_eq!(f[1], Some(Some("g".into())));
    }

    #[test]
    fn refuses_everything_else() {
        for body in [
            r#"{"token_ids":[4294967296],"model_name":"m"}"#,
            r#"{"token_ids":[99999999999],"model_name":"m"}"#,
            r#"{"token_ids":[01],"model_name":"m"}"#,
            r#"{"token_ids":[-1],"model_name":"m"}"#,
            r#"{"token_ids":[1.0],"model_name":"m"}"#,
            r#"{"token_ids":[1,],"model_name":"m"}"#,
            r#"{"token_ids":[1 2],"model_name":"m"}"#,
            r#"{"token_ids":[1],"model_name":"m","token_ids":[1]}"#,
            r#"{"token_ids":[1],"model_name":"m","x":1}"#,
            r#"{"token_ids":[1],"model_name":"\u0061"}"#,
            "{\"token_ids\":[1],\"model_name\":\"l\u{e4}\"}",
            r#"{"token_ids":[1],"model_name":"m",}"#,
            r#"{"token_ids":[1]}"#,
            r#"{"token_ids":[1],"model_name":"m","routing_group":null}"#,
            r#"{"token_ids":[1],"model_name":"m","lora_name":nul}"#,
            r#"{"token_ids":[1],"model_name":"m"} x"#,
            r#"{"token_ids":[1],"model_name":"m""#,
            r#"{"token_ids":[1"#,
            r#"{"token_ids":[1,"#,
            "{}",
            "[]",
            "",
        ] {
            assert_eq!(run(body), None, "{body}");
        }
    }

    #[test]
    fn reads_ids_of_every_length_at_every_offset() {
        // ids of 1 to 10 digits, each at several alignments and near the body's end
        let mut ids = Vec::new();
        let mut x: u64 = 7;
        for k in 0..400u64 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let digits = 1 + (k % 10) as u32;
            ids.push(((x >> 20) % 10u64.pow(digits)).min(u32::MAX as u64) as u32);
        }
        ids.extend([0, 9, 10, 99_999_999, 100_000_000, 4_294_967_295]);
        for pad in 0..9 {
            let list = ids.iter().map(|v| v.to_string()).collect::<Vec<_>>();
            let body = format!(
                r#"{{"model_name":"m","token_ids":[{}{}]}}"#,
                " ".repeat(pad),
                list.join(",")
            );
            let mut tokens = vec![0u32; ids.len()];
            let mut fields = [0u32; 2 * FIELD_COUNT];
            let r = scan_query(body.as_bytes(), &mut tokens, &mut fields);
            assert_eq!(r, Scanned::Tokens(ids.len()));
            assert_eq!(tokens, ids);
            let tail = format!(
                r#"{{"token_ids":[{}{}],"model_name":"m"}}"#,
                " ".repeat(pad),
                list.join(" , ")
            );
            let r = scan_query(tail.as_bytes(), &mut tokens, &mut fields);
            assert_eq!(r, Scanned::Tokens(ids.len()));
            assert_eq!(tokens, ids);
        }
    }

    #[test]
    fn counts_what_does_not_fit() {
        let mut tokens = [0u32; 2];
        let mut fields = [0u32; 2 * FIELD_COUNT];
        let r = scan_query(
            br#"{"token_ids":[5,6,7],"model_name":"m"}"#,
            &mut tokens,
            &mut fields,
        );
        assert_eq!(r, Scanned::TooMany(3));
        assert_eq!(tokens, [5, 6]);
    }
}
