//! Canonical JSON for signatures: the "PHP-style" sorted compact form of PROTOCOL.md
//! §17.2 and §17.6.
//!
//! Rules: object keys sorted (recursively) by their UTF-8 bytes — the same order as
//! Unicode code points, i.e. Python's `sort_keys=True`; separators `,` and `:` with no
//! whitespace; UTF-8 output; `/` and non-ASCII characters written as-is; `"`, `\` and
//! control characters below U+0020 escaped exactly as `serde_json` and Python's `json`
//! do (`\b \t \n \f \r` short forms, other controls as `\u00xx`). Numbers are written as
//! `serde_json` formats them (integers exactly; floats via the shortest round-trip
//! form, e.g. `1.0`).
//!
//! This is not RFC 8785 JCS: JCS sorts by UTF-16 code units and formats numbers the
//! ECMAScript way. For the integer/ASCII payloads the operator signatures use, the two
//! coincide.
//!
//! [`to_string_ascii`] is the variant with Python's default `ensure_ascii=True`
//! (non-ASCII written as `\uXXXX`, UTF-16 surrogate pairs above U+FFFF), which the
//! reference node uses for the CIP receipt `response_hash` (§8.11).
//!
//! The writer walks a [`serde_json::Value`] itself and sorts keys explicitly, so the
//! output does not depend on whether `serde_json/preserve_order` is enabled anywhere
//! in the dependency graph (§19 T26).

use serde::Serialize;
use serde_json::Value;

/// Errors from [`to_vec_from`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CanonicalError {
    /// The value could not be turned into JSON (for example a map with non-string keys).
    #[error("value cannot be represented as JSON")]
    NotJson(#[source] serde_json::Error),
}

/// The canonical bytes of a JSON value.
pub fn to_vec(value: &Value) -> Vec<u8> {
    to_string(value).into_bytes()
}

/// The canonical text of a JSON value.
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// Serialises any `Serialize` value through [`serde_json::Value`] and returns its
/// canonical bytes.
///
/// # Errors
/// [`CanonicalError::NotJson`] when the value has no JSON form.
pub fn to_vec_from<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CanonicalError> {
    let value = serde_json::to_value(value).map_err(CanonicalError::NotJson)?;
    Ok(to_vec(&value))
}

/// The canonical text with every non-ASCII character escaped as `\uXXXX` (Python
/// `json.dumps(sort_keys=True, separators=(",", ":"))` with the default
/// `ensure_ascii=True`).
pub fn to_string_ascii(value: &Value) -> String {
    let mut out = String::new();
    write_value(value, &mut out, true);
    out
}

/// Appends the canonical text of `value` to `out`.
pub fn write(value: &Value, out: &mut String) {
    write_value(value, out, false);
}

/// Appends the canonical text of the JSON string `s` to `out` (what [`write()`] writes
/// for `Value::String(s)`, without building the value).
pub fn write_string(s: &str, out: &mut String) {
    write_str(s, out, false);
}

fn write_value(value: &Value, out: &mut String, ascii: bool) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_str(s, out, ascii),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out, ascii);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            // serde_json's default map iterates in key order already; sort only when not
            let sorted = map
                .keys()
                .zip(map.keys().skip(1))
                .all(|(a, b)| a.as_bytes() <= b.as_bytes());
            if sorted {
                write_entries(map.iter(), out, ascii);
            } else {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                write_entries(entries.into_iter(), out, ascii);
            }
            out.push('}');
        }
    }
}

fn write_entries<'a>(
    entries: impl Iterator<Item = (&'a String, &'a Value)>,
    out: &mut String,
    ascii: bool,
) {
    for (i, (key, item)) in entries.enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(key, out, ascii);
        out.push(':');
        write_value(item, out, ascii);
    }
}

fn push_u_escape(unit: u16, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push_str("\\u");
    for shift in [12u16, 8, 4, 0] {
        out.push(char::from(HEX[usize::from((unit >> shift) & 0xf)]));
    }
}

/// Writes a JSON string literal: escapes `"`, `\` and C0 controls, and with `ascii`
/// also every character above U+007F. Runs of characters that need no escape are
/// copied at once.
fn write_str(s: &str, out: &mut String, ascii: bool) {
    out.reserve(s.len() + 2);
    out.push('"');
    let bytes = s.as_bytes();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        // eight bytes at a time while none of them needs an escape
        while let Some(chunk) = bytes.get(i..i + 8) {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            if any_needs_escape(word, ascii) {
                break;
            }
            i += 8;
        }
        let Some(&b) = bytes.get(i) else { break };
        if b >= 0x20 && b != b'"' && b != b'\\' && (!ascii || b < 0x80) {
            i += 1;
            continue;
        }
        // `i` is a char boundary: every byte before it was ASCII or a whole character
        out.push_str(&s[start..i]);
        if b >= 0x80 {
            let c = s[i..].chars().next().unwrap_or('\u{fffd}');
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                push_u_escape(*unit, out);
            }
            i += c.len_utf8();
        } else {
            match b {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                0x08 => out.push_str("\\b"),
                0x09 => out.push_str("\\t"),
                0x0A => out.push_str("\\n"),
                0x0C => out.push_str("\\f"),
                0x0D => out.push_str("\\r"),
                _ => push_u_escape(u16::from(b), out),
            }
            i += 1;
        }
        start = i;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// Whether any of the eight bytes of `word` needs an escape in [`write_str`]: a C0
/// control, `"`, `\`, or with `ascii` a byte of a non-ASCII character. (The
/// zero-byte and less-than tests of "Bit Twiddling Hacks": exact as a yes/no answer.)
fn any_needs_escape(word: u64, ascii: bool) -> bool {
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH_BITS;
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH_BITS;
    let quote = has_zero(word ^ (ONES * u64::from(b'"')));
    let backslash = has_zero(word ^ (ONES * u64::from(b'\\')));
    let high = if ascii { word & HIGH_BITS } else { 0 };
    control | quote | backslash | high != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The straightforward char-by-char writer the fast one must equal.
    fn reference_str(s: &str, ascii: bool) -> String {
        let mut out = String::from('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\u{08}' => out.push_str("\\b"),
                '\u{09}' => out.push_str("\\t"),
                '\u{0A}' => out.push_str("\\n"),
                '\u{0C}' => out.push_str("\\f"),
                '\u{0D}' => out.push_str("\\r"),
                c if (c as u32) < 0x20 || (ascii && (c as u32) > 0x7f) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    proptest::proptest! {
        #[test]
        fn strings_match_the_reference_and_serde_json(s in "\\PC*|[\\x00-\\x7f]*|.*") {
            for ascii in [false, true] {
                let mut out = String::new();
                write_str(&s, &mut out, ascii);
                proptest::prop_assert_eq!(&out, &reference_str(&s, ascii));
            }
            let mut out = String::new();
            write_str(&s, &mut out, false);
            proptest::prop_assert_eq!(out, serde_json::to_string(&s).unwrap());
        }
    }

    /// The eight-byte test against the byte-by-byte rule: every pair of byte values at
    /// several pairs of positions, in a clean word and in one of non-ASCII bytes.
    #[test]
    fn the_word_test_agrees_with_the_byte_rule() {
        let needs =
            |b: u8, ascii: bool| b < 0x20 || b == b'"' || b == b'\\' || (ascii && b >= 0x80);
        for background in [b'a', 0xa9] {
            for (p, q) in [(0, 1), (3, 7), (6, 7), (7, 0), (2, 2)] {
                for x in 0..=255u8 {
                    for y in 0..=255u8 {
                        let mut bytes = [background; 8];
                        bytes[p] = x;
                        bytes[q] = y;
                        let word = u64::from_le_bytes(bytes);
                        for ascii in [false, true] {
                            let want = bytes.iter().any(|b| needs(*b, ascii));
                            assert_eq!(any_needs_escape(word, ascii), want, "{bytes:?} {ascii}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn escapes_every_kind_of_character() {
        let s = "a\"b\\c\u{1}\u{8}\t\n\u{c}\r\u{1f}\u{7f}é€😀z";
        for ascii in [false, true] {
            let mut out = String::new();
            write_str(s, &mut out, ascii);
            assert_eq!(out, reference_str(s, ascii));
        }
        // DEL (U+007F) is not escaped, as in Python's json.dumps
        let want =
            "\"a\\\"b\\\\c\\u0001\\b\\t\\n\\f\\r\\u001f\u{7f}\\u00e9\\u20ac\\ud83d\\ude00z\"";
        assert_eq!(to_string_ascii(&json!(s)), want);
    }

    #[test]
    fn kat_delegation_17_2() {
        let v = json!({"operator_pub": "T3BQdWJLZXlCYXNlNjQ=", "node_id": "node-kat-1", "not_after": 1_893_456_000u64});
        assert_eq!(
            to_string(&v),
            r#"{"node_id":"node-kat-1","not_after":1893456000,"operator_pub":"T3BQdWJLZXlCYXNlNjQ="}"#
        );
    }

    #[test]
    fn kat_rename_17_3() {
        let v =
            json!({"ts": 1_893_456_000u64, "operator_pub": "T3BQdWI=", "display_name": "New Name"});
        assert_eq!(
            to_string(&v),
            r#"{"display_name":"New Name","operator_pub":"T3BQdWI=","ts":1893456000}"#
        );
    }

    #[test]
    fn kat_self_service_body_17_3() {
        let v = json!({
            "ts": 1_893_456_000u64, "terms_version": "2026-07", "operator_pub": "T3BQdWI=",
            "nonce": "nonce-1234567890", "dpa_version": "2026-07", "action": "accept"
        });
        assert_eq!(
            to_string(&v),
            r#"{"action":"accept","dpa_version":"2026-07","nonce":"nonce-1234567890","operator_pub":"T3BQdWI=","terms_version":"2026-07","ts":1893456000}"#
        );
    }

    #[test]
    fn nested_objects_are_sorted_and_arrays_keep_order() {
        let v = json!({"b": {"z": 1, "a": [3, {"y": null, "x": true}]}, "a": false});
        assert_eq!(
            to_string(&v),
            r#"{"a":false,"b":{"a":[3,{"x":true,"y":null}],"z":1}}"#
        );
    }

    #[test]
    fn slashes_and_unicode_are_not_escaped() {
        let v = json!({"url": "https://x.example/a/b", "name": "Zoë 東京 🚀"});
        assert_eq!(
            to_string(&v),
            "{\"name\":\"Zoë 東京 🚀\",\"url\":\"https://x.example/a/b\"}"
        );
    }

    #[test]
    fn control_characters_are_escaped_like_serde_json() {
        let s: String = (0u32..0x21).filter_map(char::from_u32).collect::<String>() + "\"\\\u{7f}";
        let v = Value::String(s);
        assert_eq!(to_string(&v), serde_json::to_string(&v).unwrap());
    }

    #[test]
    fn keys_sort_by_code_point() {
        let v = json!({"é": 1, "z": 2, "Z": 3, "\u{ff61}": 4, "😀": 5});
        assert_eq!(
            to_string(&v),
            "{\"Z\":3,\"z\":2,\"é\":1,\"\u{ff61}\":4,\"😀\":5}"
        );
    }

    #[test]
    fn ascii_variant_matches_python_ensure_ascii() {
        // Expected text produced with Python 3:
        // json.dumps({"z": "Zoë/東京 🚀\x01", "a": 1}, sort_keys=True, separators=(",", ":"))
        let v = json!({"z": "Zoë/東京 🚀\u{1}", "a": 1});
        assert_eq!(
            to_string_ascii(&v),
            r#"{"a":1,"z":"Zo\u00eb/\u6771\u4eac \ud83d\ude80\u0001"}"#
        );
    }

    #[test]
    fn numbers() {
        let v = json!([0, -1, 18_446_744_073_709_551_615u64, 1.5, 1.0]);
        assert_eq!(to_string(&v), "[0,-1,18446744073709551615,1.5,1.0]");
    }

    #[test]
    fn from_serialize() {
        #[derive(Serialize)]
        struct S {
            z: u8,
            a: &'static str,
        }
        assert_eq!(
            to_vec_from(&S { z: 1, a: "x" }).unwrap(),
            br#"{"a":"x","z":1}"#
        );
    }

    proptest::proptest! {
        #[test]
        fn canonical_text_parses_back_to_the_same_value(
            keys in proptest::collection::vec("\\PC{0,8}", 0..8),
            s in "\\PC{0,16}",
            n in proptest::num::i64::ANY,
        ) {
            let mut map = serde_json::Map::new();
            for (i, k) in keys.iter().enumerate() {
                map.insert(k.clone(), if i % 2 == 0 { json!(s) } else { json!({"n": n, "s": [s.clone()]}) });
            }
            let v = Value::Object(map);
            let text = to_string(&v);
            let back: Value = serde_json::from_str(&text).unwrap();
            proptest::prop_assert_eq!(&back, &v);
            proptest::prop_assert_eq!(to_string(&back), text);
        }
    }
}
