//! CBOR helpers shared by the native messages (PROTOCOL.md §10.4, §19 T5, T15).
//!
//! * [`normalize`] turns any well-formed CBOR item into the form our typed decoders read:
//!   tags removed (T15: emit untagged, strip on receive) and indefinite-length strings,
//!   arrays and maps rewritten as definite ones. Input that needs no change is returned
//!   borrowed, so the common path copies nothing.
//! * [`to_json`] / [`write_json`] convert between CBOR items and `serde_json::Value`, for
//!   task payloads and results that travel as JSON over HTTP and as CBOR natively. Output
//!   is deterministic CBOR (RFC 8949 §4.2.1: shortest integers, definite lengths, map keys
//!   sorted by their encoded bytes).
//!
//! All walkers bound their recursion depth ([`MAX_DEPTH`]) so hostile input cannot
//! exhaust the stack.

use std::borrow::Cow;

use base64::Engine as _;
use minicbor::data::Type;
use minicbor::Decoder;

/// Deepest nesting of arrays/maps/tags accepted in any received CBOR item.
pub const MAX_DEPTH: usize = 64;

/// Why a CBOR item could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CborError {
    /// The bytes are not well-formed CBOR (truncated, bad additional info, stray break).
    #[error("malformed CBOR: {0}")]
    Malformed(String),
    /// Well-formed CBOR that violates a rule (invalid UTF-8, too deep, wrong shape).
    #[error("invalid CBOR content: {0}")]
    Invalid(&'static str),
    /// Bytes remain after the single top-level item.
    #[error("trailing bytes after the CBOR item")]
    TrailingBytes,
}

impl CborError {
    /// Keeps minicbor's text: it names types and positions, never payload bytes.
    pub(crate) fn from_decode(e: &minicbor::decode::Error) -> Self {
        CborError::Malformed(e.to_string())
    }
}

/// Returns `bytes` unchanged when it holds one CBOR item without tags or
/// indefinite-length containers, or a rewritten copy without them.
///
/// Errors on malformed input, nesting deeper than [`MAX_DEPTH`] and trailing bytes.
pub fn normalize(bytes: &[u8]) -> Result<Cow<'_, [u8]>, CborError> {
    let mut d = Decoder::new(bytes);
    let needs_rewrite = scan(&mut d, 0)?;
    if d.position() != bytes.len() {
        return Err(CborError::TrailingBytes);
    }
    if !needs_rewrite {
        return Ok(Cow::Borrowed(bytes));
    }
    let mut d = Decoder::new(bytes);
    let mut out = Vec::with_capacity(bytes.len());
    copy_item(&mut d, &mut out, 0)?;
    Ok(Cow::Owned(out))
}

/// Walks one item; returns whether it contains tags or indefinite-length items.
fn scan(d: &mut Decoder<'_>, depth: usize) -> Result<bool, CborError> {
    if depth > MAX_DEPTH {
        return Err(CborError::Invalid("CBOR nested too deeply"));
    }
    let ty = d.datatype().map_err(|e| CborError::from_decode(&e))?;
    let err = |e: minicbor::decode::Error| CborError::from_decode(&e);
    Ok(match ty {
        Type::Tag => {
            d.tag().map_err(err)?;
            scan(d, depth + 1)?;
            true
        }
        Type::BytesIndef | Type::StringIndef => {
            d.skip().map_err(err)?;
            true
        }
        Type::String => {
            d.str().map_err(err)?; // validates UTF-8
            false
        }
        Type::Array => {
            let n = d.array().map_err(err)?.unwrap_or(0);
            let mut dirty = false;
            for _ in 0..n {
                dirty |= scan(d, depth + 1)?;
            }
            dirty
        }
        Type::Map => {
            let n = d.map().map_err(err)?.unwrap_or(0);
            let mut dirty = false;
            for _ in 0..n {
                dirty |= scan(d, depth + 1)?;
                dirty |= scan(d, depth + 1)?;
            }
            dirty
        }
        Type::ArrayIndef | Type::MapIndef => {
            walk_indef(d, depth)?;
            true
        }
        Type::Break => return Err(CborError::Invalid("unexpected break")),
        Type::Unknown(_) => return Err(CborError::Invalid("unknown CBOR initial byte")),
        _ => {
            d.skip().map_err(err)?;
            false
        }
    })
}

/// Consumes an indefinite array or map, validating its items.
fn walk_indef(d: &mut Decoder<'_>, depth: usize) -> Result<(), CborError> {
    let err = |e: minicbor::decode::Error| CborError::from_decode(&e);
    let is_map = d.datatype().map_err(err)? == Type::MapIndef;
    if is_map {
        d.map().map_err(err)?;
    } else {
        d.array().map_err(err)?;
    }
    loop {
        if d.datatype().map_err(err)? == Type::Break {
            d.skip().map_err(err)?;
            return Ok(());
        }
        scan(d, depth + 1)?;
        if is_map {
            scan(d, depth + 1)?;
        }
    }
}

/// Copies one item from `d` to `out`, dropping tags and making lengths definite.
fn copy_item(d: &mut Decoder<'_>, out: &mut Vec<u8>, depth: usize) -> Result<(), CborError> {
    if depth > MAX_DEPTH {
        return Err(CborError::Invalid("CBOR nested too deeply"));
    }
    let err = |e: minicbor::decode::Error| CborError::from_decode(&e);
    let start = d.position();
    match d.datatype().map_err(err)? {
        Type::Tag => {
            d.tag().map_err(err)?;
            copy_item(d, out, depth + 1)?;
        }
        Type::BytesIndef => {
            let mut all = Vec::new();
            for chunk in d.bytes_iter().map_err(err)? {
                all.extend_from_slice(chunk.map_err(err)?);
            }
            write_head(out, 2, all.len() as u64);
            out.extend_from_slice(&all);
        }
        Type::StringIndef => {
            let mut all = String::new();
            for chunk in d.str_iter().map_err(err)? {
                all.push_str(chunk.map_err(err)?);
            }
            write_head(out, 3, all.len() as u64);
            out.extend_from_slice(all.as_bytes());
        }
        ty @ (Type::Array | Type::ArrayIndef | Type::Map | Type::MapIndef) => {
            let is_map = matches!(ty, Type::Map | Type::MapIndef);
            let len = if is_map { d.map() } else { d.array() }.map_err(err)?;
            let per = if is_map { 2 } else { 1 };
            let mut body = Vec::new();
            let mut count = 0u64;
            match len {
                Some(n) => {
                    for _ in 0..n * per {
                        copy_item(d, &mut body, depth + 1)?;
                    }
                    count = n;
                }
                None => {
                    while d.datatype().map_err(err)? != Type::Break {
                        for _ in 0..per {
                            copy_item(d, &mut body, depth + 1)?;
                        }
                        count += 1;
                    }
                    d.skip().map_err(err)?;
                }
            }
            write_head(out, if is_map { 5 } else { 4 }, count);
            out.extend_from_slice(&body);
        }
        _ => {
            d.skip().map_err(err)?;
            out.extend_from_slice(&d.input()[start..d.position()]);
        }
    }
    Ok(())
}

/// Converts one CBOR item (tags ignored, any float width) to a JSON value.
///
/// Map keys that are not text become their JSON text (`1` → `"1"`); byte strings become
/// unpadded base64url text; NaN and infinities, `undefined` and simple values become
/// `null`. The whole input must be exactly one item.
pub fn to_json(bytes: &[u8]) -> Result<serde_json::Value, CborError> {
    let mut d = Decoder::new(bytes);
    let v = read_json(&mut d, 0)?;
    if d.position() != bytes.len() {
        return Err(CborError::TrailingBytes);
    }
    Ok(v)
}

/// Reads one CBOR item at the decoder's position as JSON.
pub(crate) fn read_json(d: &mut Decoder<'_>, depth: usize) -> Result<serde_json::Value, CborError> {
    use serde_json::Value;
    if depth > MAX_DEPTH {
        return Err(CborError::Invalid("CBOR nested too deeply"));
    }
    let err = |e: minicbor::decode::Error| CborError::from_decode(&e);
    Ok(match d.datatype().map_err(err)? {
        Type::Bool => Value::Bool(d.bool().map_err(err)?),
        Type::Null => {
            d.null().map_err(err)?;
            Value::Null
        }
        Type::Undefined | Type::Simple => {
            d.skip().map_err(err)?;
            Value::Null
        }
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => Value::from(d.u64().map_err(err)?),
        Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int => {
            let i: i128 = d.int().map_err(err)?.into();
            match i64::try_from(i) {
                Ok(v) => Value::from(v),
                Err(_) => serde_json::Number::from_f64(i as f64).map_or(Value::Null, Value::Number),
            }
        }
        Type::F16 | Type::F32 | Type::F64 => {
            serde_json::Number::from_f64(d.f64().map_err(err)?).map_or(Value::Null, Value::Number)
        }
        Type::Bytes => Value::String(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d.bytes().map_err(err)?),
        ),
        Type::BytesIndef => {
            let mut all = Vec::new();
            for c in d.bytes_iter().map_err(err)? {
                all.extend_from_slice(c.map_err(err)?);
            }
            Value::String(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(all))
        }
        Type::String => Value::String(d.str().map_err(err)?.to_owned()),
        Type::StringIndef => {
            let mut all = String::new();
            for c in d.str_iter().map_err(err)? {
                all.push_str(c.map_err(err)?);
            }
            Value::String(all)
        }
        Type::Tag => {
            d.tag().map_err(err)?;
            read_json(d, depth + 1)?
        }
        Type::Array | Type::ArrayIndef => {
            let len = d.array().map_err(err)?;
            let mut out = Vec::with_capacity(len.unwrap_or(0).min(1024) as usize);
            match len {
                Some(n) => {
                    for _ in 0..n {
                        out.push(read_json(d, depth + 1)?);
                    }
                }
                None => {
                    while d.datatype().map_err(err)? != Type::Break {
                        out.push(read_json(d, depth + 1)?);
                    }
                    d.skip().map_err(err)?;
                }
            }
            Value::Array(out)
        }
        Type::Map | Type::MapIndef => {
            let len = d.map().map_err(err)?;
            let mut out = serde_json::Map::new();
            let mut entry = |d: &mut Decoder<'_>| -> Result<(), CborError> {
                let key = match read_json(d, depth + 1)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                let value = read_json(d, depth + 1)?;
                out.insert(key, value);
                Ok(())
            };
            match len {
                Some(n) => {
                    for _ in 0..n {
                        entry(d)?;
                    }
                }
                None => {
                    while d.datatype().map_err(err)? != Type::Break {
                        entry(d)?;
                    }
                    d.skip().map_err(err)?;
                }
            }
            Value::Object(out)
        }
        Type::Break => return Err(CborError::Invalid("unexpected break")),
        Type::Unknown(_) => return Err(CborError::Invalid("unknown CBOR initial byte")),
    })
}

/// Encodes a JSON value as deterministic CBOR, appending to `out`.
///
/// Integers use the shortest form; floats that hold an integral value that fits `i64`
/// stay floats (encoded as f64); object keys are sorted by their encoded bytes
/// (RFC 8949 §4.2.1 core deterministic order).
pub fn write_json(value: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match value {
        Value::Null => out.push(0xf6),
        Value::Bool(false) => out.push(0xf4),
        Value::Bool(true) => out.push(0xf5),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                write_head(out, 0, u);
            } else if let Some(i) = n.as_i64() {
                // negative: major type 1 encodes -1 - n
                write_head(out, 1, (-1 - i) as u64);
            } else {
                out.push(0xfb);
                out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_be_bytes());
            }
        }
        Value::String(s) => {
            write_head(out, 3, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Array(items) => {
            write_head(out, 4, items.len() as u64);
            for item in items {
                write_json(item, out);
            }
        }
        Value::Object(map) => {
            write_head(out, 5, map.len() as u64);
            // encoded text keys: head then bytes; sort by (len, bytes) == encoded order
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| {
                a.0.len()
                    .cmp(&b.0.len())
                    .then_with(|| a.0.as_bytes().cmp(b.0.as_bytes()))
            });
            for (k, v) in entries {
                write_head(out, 3, k.len() as u64);
                out.extend_from_slice(k.as_bytes());
                write_json(v, out);
            }
        }
    }
}

/// Writes a CBOR head (major type + argument) in its shortest form.
pub(crate) fn write_head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let m = major << 5;
    if arg < 24 {
        out.push(m | arg as u8);
    } else if arg <= u64::from(u8::MAX) {
        out.extend_from_slice(&[m | 24, arg as u8]);
    } else if arg <= u64::from(u16::MAX) {
        out.push(m | 25);
        out.extend_from_slice(&(arg as u16).to_be_bytes());
    } else if arg <= u64::from(u32::MAX) {
        out.push(m | 26);
        out.extend_from_slice(&(arg as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&arg.to_be_bytes());
    }
}

/// Encodes a JSON value as deterministic CBOR into a new buffer.
pub fn json_to_vec(value: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_json(value, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).expect("hex")
    }

    #[test]
    fn canonical_input_is_borrowed() {
        let b = unhex("a20101026474657374");
        assert!(matches!(normalize(&b).expect("ok"), Cow::Borrowed(_)));
    }

    #[test]
    fn tags_are_stripped() {
        // 65535({1: 1}) -> {1: 1}
        let b = unhex("d9ffff a10101");
        assert_eq!(
            normalize(&b).expect("ok").as_ref(),
            unhex("a10101").as_slice()
        );
        // nested tag on a value: {1: 37(h'00')} -> {1: h'00'}
        let b = unhex("a1 01 d825 4100");
        assert_eq!(
            normalize(&b).expect("ok").as_ref(),
            unhex("a1 01 4100").as_slice()
        );
    }

    #[test]
    fn indefinite_lengths_become_definite() {
        // {_ 1: "a" "b"(indef) , 2: [_ 1, 2] }
        let b = unhex("bf 01 7f 6161 6162 ff 02 9f 01 02 ff ff");
        let n = normalize(&b).expect("ok");
        assert_eq!(n.as_ref(), unhex("a2 01 626162 02 820102").as_slice());
    }

    #[test]
    fn malformed_and_trailing_are_errors() {
        assert!(normalize(&unhex("a201")).is_err());
        assert!(matches!(
            normalize(&unhex("a0 00")),
            Err(CborError::TrailingBytes)
        ));
        assert!(normalize(&unhex("ff")).is_err());
        assert!(normalize(&unhex("62 c328")).is_err(), "invalid UTF-8 text");
        assert!(normalize(&[]).is_err());
    }

    #[test]
    fn depth_is_bounded() {
        let mut b = vec![0x81; 10_000];
        b.push(0x00);
        assert!(normalize(&b).is_err());
        assert!(to_json(&b).is_err());
    }

    #[test]
    fn json_round_trip_and_key_order() {
        let v = json!({"model": "m", "id": "x", "usage": {"total_tokens": 7}, "n": -5, "f": 0.5, "ok": true, "z": null, "a": [1, "two"]});
        let bytes = json_to_vec(&v);
        assert_eq!(to_json(&bytes).expect("decode"), v);
        // keys sorted by encoded bytes: shorter first, then bytewise
        let keys: Vec<String> = match to_json(&bytes).expect("decode") {
            serde_json::Value::Object(m) => m.keys().cloned().collect(),
            _ => unreachable!(),
        };
        assert_eq!(keys.len(), 8);
        assert_eq!(&bytes[..4], &unhex("a8 61 61 82")[..]); // first key is "a"
    }

    #[test]
    fn floats_of_every_width_decode() {
        assert_eq!(to_json(&unhex("f93e00")).expect("f16"), json!(1.5));
        assert_eq!(to_json(&unhex("fa3fc00000")).expect("f32"), json!(1.5));
        assert_eq!(
            to_json(&unhex("fb3ff8000000000000")).expect("f64"),
            json!(1.5)
        );
        assert_eq!(
            to_json(&unhex("f97e00")).expect("nan"),
            serde_json::Value::Null
        );
    }

    #[test]
    fn shortest_integer_heads() {
        let mut out = Vec::new();
        for (n, want) in [
            (0u64, "00"),
            (23, "17"),
            (24, "1818"),
            (100, "1864"),
            (256, "190100"),
            (65536, "1a00010000"),
            (1 << 32, "1b0000000100000000"),
        ] {
            out.clear();
            write_head(&mut out, 0, n);
            assert_eq!(hex::encode(&out), want);
        }
        assert_eq!(json_to_vec(&json!(-1)), unhex("20"));
        assert_eq!(json_to_vec(&json!(-500)), unhex("3901f3"));
    }
}
