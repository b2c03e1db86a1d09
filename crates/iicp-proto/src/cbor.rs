//! CBOR helpers shared by the native messages (PROTOCOL.md §10.4, §19 T5, T15; ADR 0007).
//!
//! * [`normalize`] checks the structure of a received CBOR item and turns it into the
//!   form our typed decoders read. Strict on structure: indefinite-length items and
//!   duplicate map keys (at any depth) are refused ([`CborError::Indefinite`],
//!   [`CborError::DuplicateKey`]; framing §4.1, §10.6). Lenient on canonical form: keys in
//!   any order, integers and lengths of any width, every float width, and tags, which are
//!   removed (T15: emit untagged, strip on receive). Input without tags is returned
//!   borrowed, so the common path copies nothing.
//! * [`to_json`] / [`write_json`] convert between CBOR items and `serde_json::Value`, for
//!   task payloads and results that travel as JSON over HTTP and as CBOR natively.
//!   [`to_json`] applies the same structural rules. Output is deterministic CBOR
//!   (RFC 8949 §4.2.1: shortest integers, definite lengths, map keys sorted by their
//!   encoded bytes).
//!
//! All walkers bound their recursion depth ([`MAX_DEPTH`]) so hostile input cannot
//! exhaust the stack.

use std::borrow::Cow;
use std::collections::HashSet;

use base64::Engine as _;
use minicbor::data::Type;
use minicbor::Decoder;

/// Deepest nesting of arrays/maps/tags accepted in any received CBOR item.
pub const MAX_DEPTH: usize = 64;

/// Maps with more entries than this check their keys for duplicates with a hash set;
/// smaller ones compare linearly (no hashing for the usual handful of keys).
const LINEAR_KEY_CHECK: usize = 16;

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
    /// An indefinite-length string, array or map (framing §4.1, §10.6: definite lengths
    /// only).
    #[error("indefinite-length CBOR item")]
    Indefinite,
    /// A map holds the same key twice (framing §4.1). Readers that keep the first or the
    /// last value would disagree on what the message says.
    #[error("duplicate CBOR map key")]
    DuplicateKey,
}

impl CborError {
    /// Keeps minicbor's text: it names types and positions, never payload bytes.
    pub(crate) fn from_decode(e: &minicbor::decode::Error) -> Self {
        CborError::Malformed(e.to_string())
    }

    /// Whether the item is well-formed CBOR that breaks a structural rule of the native
    /// transport (indefinite length, duplicate key): answered `invalid_payload`, not
    /// `cbor_decode_error` (framing §9.6, §10.6).
    pub fn is_structural(&self) -> bool {
        matches!(self, CborError::Indefinite | CborError::DuplicateKey)
    }
}

/// Returns `bytes` unchanged when it holds one CBOR item without tags, or a copy with
/// the tags removed.
///
/// Errors on malformed input, indefinite-length items, duplicate map keys at any depth,
/// nesting deeper than [`MAX_DEPTH`] and trailing bytes.
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

/// What identifies a map key, independent of how it was encoded: integers by value
/// (so `3` and the non-shortest `0x18 0x03` are the same key), strings by content,
/// tags ignored (they are stripped), anything else by its encoded bytes.
#[derive(Debug, PartialEq, Eq, Hash)]
enum KeyId<'b> {
    Int(i128),
    Text(&'b str),
    Bytes(&'b [u8]),
    Other(&'b [u8]),
}

/// The keys seen so far in one map.
enum SeenKeys<'b> {
    Few(Vec<KeyId<'b>>),
    Many(HashSet<KeyId<'b>>),
}

impl<'b> SeenKeys<'b> {
    fn new(entries: u64) -> Self {
        let n = usize::try_from(entries).unwrap_or(usize::MAX);
        if n <= LINEAR_KEY_CHECK {
            SeenKeys::Few(Vec::with_capacity(n))
        } else {
            // the entry count is the peer's claim: reserve only what a frame can hold
            SeenKeys::Many(HashSet::with_capacity(n.min(1024)))
        }
    }

    /// Records `key`; `false` when it was already there.
    fn insert(&mut self, key: KeyId<'b>) -> bool {
        match self {
            SeenKeys::Few(v) => {
                if v.contains(&key) {
                    return false;
                }
                v.push(key);
                true
            }
            SeenKeys::Many(set) => set.insert(key),
        }
    }
}

/// Reads one map key; returns its identity and whether it carried tags.
fn scan_key<'b>(d: &mut Decoder<'b>, depth: usize) -> Result<(KeyId<'b>, bool), CborError> {
    let err = |e: minicbor::decode::Error| CborError::from_decode(&e);
    let mut tagged = false;
    let mut depth = depth;
    while d.datatype().map_err(err)? == Type::Tag {
        if depth > MAX_DEPTH {
            return Err(CborError::Invalid("CBOR nested too deeply"));
        }
        d.tag().map_err(err)?;
        tagged = true;
        depth += 1;
    }
    let start = d.position();
    let id = match d.datatype().map_err(err)? {
        Type::U8
        | Type::U16
        | Type::U32
        | Type::U64
        | Type::I8
        | Type::I16
        | Type::I32
        | Type::I64
        | Type::Int => KeyId::Int(d.int().map_err(err)?.into()),
        Type::String => KeyId::Text(d.str().map_err(err)?),
        Type::Bytes => KeyId::Bytes(d.bytes().map_err(err)?),
        _ => {
            tagged |= scan(d, depth)?;
            KeyId::Other(&d.input()[start..d.position()])
        }
    };
    Ok((id, tagged))
}

/// Walks one item; returns whether it contains tags.
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
        Type::BytesIndef | Type::StringIndef | Type::ArrayIndef | Type::MapIndef => {
            return Err(CborError::Indefinite)
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
            let mut seen = SeenKeys::new(n);
            let mut dirty = false;
            for _ in 0..n {
                let (key, tagged) = scan_key(d, depth + 1)?;
                if !seen.insert(key) {
                    return Err(CborError::DuplicateKey);
                }
                dirty |= tagged;
                dirty |= scan(d, depth + 1)?;
            }
            dirty
        }
        Type::Break => return Err(CborError::Invalid("unexpected break")),
        Type::Unknown(_) => return Err(CborError::Invalid("unknown CBOR initial byte")),
        _ => {
            d.skip().map_err(err)?;
            false
        }
    })
}

/// Copies one item (already checked by [`scan`]) from `d` to `out`, dropping tags.
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
        ty @ (Type::Array | Type::Map) => {
            let is_map = ty == Type::Map;
            let len = if is_map { d.map() } else { d.array() }
                .map_err(err)?
                .ok_or(CborError::Indefinite)?;
            write_head(out, if is_map { 5 } else { 4 }, len);
            for _ in 0..len * if is_map { 2 } else { 1 } {
                copy_item(d, out, depth + 1)?;
            }
        }
        Type::BytesIndef | Type::StringIndef | Type::ArrayIndef | Type::MapIndef => {
            return Err(CborError::Indefinite)
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
/// `null`. The whole input must be exactly one item, with definite lengths only and no
/// map whose keys collide as JSON keys (a duplicate key, or `1` next to `"1"`).
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
        Type::String => Value::String(d.str().map_err(err)?.to_owned()),
        Type::Tag => {
            d.tag().map_err(err)?;
            read_json(d, depth + 1)?
        }
        Type::Array => {
            let n = d.array().map_err(err)?.ok_or(CborError::Indefinite)?;
            // the count is the peer's claim: reserve no more than a frame can hold
            let mut out = Vec::with_capacity(n.min(1024) as usize);
            for _ in 0..n {
                out.push(read_json(d, depth + 1)?);
            }
            Value::Array(out)
        }
        Type::Map => {
            let n = d.map().map_err(err)?.ok_or(CborError::Indefinite)?;
            let mut out = serde_json::Map::new();
            for _ in 0..n {
                let key = match read_json(d, depth + 1)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                let value = read_json(d, depth + 1)?;
                if out.insert(key, value).is_some() {
                    return Err(CborError::DuplicateKey);
                }
            }
            Value::Object(out)
        }
        Type::BytesIndef | Type::StringIndef | Type::ArrayIndef | Type::MapIndef => {
            return Err(CborError::Indefinite)
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

/// Encodes JSON text as deterministic CBOR into a new buffer, exactly as [`json_to_vec`]
/// encodes the value the text parses to, without building that value (a model
/// server's streamed chunk goes from JSON text to a native RESPONSE in one pass). Of
/// an object's repeated keys the last counts, as in a parsed value.
///
/// # Errors
/// The text is not one JSON value.
pub fn json_text_to_vec(text: &str) -> Result<Vec<u8>, serde_json::Error> {
    use serde::de::DeserializeSeed as _;
    let mut out = Vec::with_capacity(text.len());
    let mut de = serde_json::Deserializer::from_str(text);
    Transcode(&mut out).deserialize(&mut de)?;
    de.end()?;
    Ok(out)
}

/// Writes the JSON value being read as CBOR ([`json_text_to_vec`]).
struct Transcode<'o>(&'o mut Vec<u8>);

impl<'de> serde::de::DeserializeSeed<'de> for Transcode<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Replaces the one-byte placeholder at `at` by the head of an item of `major` with
/// `count` members (counts of 24 and more need a longer head).
fn patch_head(out: &mut Vec<u8>, at: usize, major: u8, count: usize) {
    if count < 24 {
        out[at] = (major << 5) | count as u8;
        return;
    }
    let mut head = Vec::with_capacity(9);
    write_head(&mut head, major, count as u64);
    out.splice(at..=at, head);
}

impl<'de> serde::de::Visitor<'de> for Transcode<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.0.push(0xf6);
        Ok(())
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.0.push(if v { 0xf5 } else { 0xf4 });
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        write_head(self.0, 0, v);
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        match u64::try_from(v) {
            Ok(u) => write_head(self.0, 0, u),
            // negative: major type 1 encodes -1 - n
            Err(_) => write_head(self.0, 1, (-1 - v) as u64),
        }
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.0.push(0xfb);
        self.0.extend_from_slice(&v.to_be_bytes());
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        write_head(self.0, 3, v.len() as u64);
        self.0.extend_from_slice(v.as_bytes());
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let at = self.0.len();
        self.0.push(0);
        let mut count = 0;
        while seq.next_element_seed(Transcode(&mut *self.0))?.is_some() {
            count += 1;
        }
        patch_head(self.0, at, 4, count);
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // entries are written in the order read, then put in key order (length, then
        // bytes: the order of their encoded forms) unless they came in it
        let at = self.0.len();
        self.0.push(0);
        let start = at + 1;
        // (entry start, key end, entry end)
        let mut entries: Vec<(usize, usize, usize)> = Vec::new();
        let mut in_order = true;
        while let Some(()) = map.next_key_seed(Key(&mut *self.0))? {
            let key_end = self.0.len();
            map.next_value_seed(Transcode(&mut *self.0))?;
            let entry = (entries.last().map_or(start, |e| e.2), key_end, self.0.len());
            if let Some(last) = entries.last() {
                let (prev, this) = (&self.0[last.0..last.1], &self.0[entry.0..entry.1]);
                in_order &= (prev.len(), prev) < (this.len(), this);
            }
            entries.push(entry);
        }
        if in_order {
            // already sorted and without repeats: only the head is written
            patch_head(self.0, at, 5, entries.len());
            return Ok(());
        }
        let body = self.0.split_off(start);
        self.0.truncate(at);
        let key_of = |e: &(usize, usize, usize)| &body[e.0 - start..e.1 - start];
        // stable: of equal keys the one read last stays last, and is kept
        entries.sort_by(|a, b| {
            let (ka, kb) = (key_of(a), key_of(b));
            ka.len().cmp(&kb.len()).then_with(|| ka.cmp(kb))
        });
        entries.dedup_by(|later, earlier| {
            let same = key_of(later) == key_of(earlier);
            if same {
                *earlier = *later;
            }
            same
        });
        write_head(self.0, 5, entries.len() as u64);
        for e in &entries {
            self.0.extend_from_slice(&body[e.0 - start..e.2 - start]);
        }
        Ok(())
    }
}

/// Writes an object key as a CBOR text string, without an owned copy of it.
struct Key<'o>(&'o mut Vec<u8>);

impl<'de> serde::de::DeserializeSeed<'de> for Key<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for Key<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        write_head(self.0, 3, v.len() as u64);
        self.0.extend_from_slice(v.as_bytes());
        Ok(())
    }
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
    fn indefinite_lengths_are_refused() {
        // framing §4.1 / §10.6: definite lengths only, at any depth, in both readers
        for hex in [
            "bf 01 02 ff",       // {_ 1: 2}
            "9f 01 02 ff",       // [_ 1, 2]
            "a1 01 9f 01 ff",    // {1: [_ 1]}
            "a1 05 a1 01 bf ff", // {5: {1: {_ }}}
            "a1 02 7f 6161 ff",  // {2: (_ "a")}
            "a1 05 5f 4101 ff",  // {5: (_ h'01')}
            "81 d9ffff bf ff",   // [65535({_ })]
        ] {
            let b = unhex(hex);
            assert!(
                matches!(normalize(&b), Err(CborError::Indefinite)),
                "normalize {hex}"
            );
            assert!(
                matches!(to_json(&b), Err(CborError::Indefinite)),
                "to_json {hex}"
            );
            assert!(CborError::Indefinite.is_structural());
        }
    }

    #[test]
    fn duplicate_keys_are_refused_at_every_depth() {
        for hex in [
            "a2 03 61 61 03 61 62",          // {3: "a", 3: "b"}
            "a2 03 61 61 18 03 61 62",       // {3: .., 3 (non-shortest): ..}
            "a2 03 61 61 d8 25 03 61 62",    // {3: .., 37(3): ..}: tags are stripped
            "a2 61 6b 01 61 6b 02",          // {"k": 1, "k": 2}
            "a2 41 00 01 41 00 02",          // {h'00': 1, h'00': 2}
            "a2 20 01 38 00 02",             // {-1: 1, -1 (non-shortest): 2}
            "a1 05 a2 01 01 01 02",          // {5: {1: 1, 1: 2}}
            "a1 14 81 a2 61 61 01 61 61 02", // {20: [{"a": 1, "a": 2}]}
            "a2 82 01 02 00 82 01 02 01",    // {[1, 2]: 0, [1, 2]: 1}
        ] {
            let b = unhex(hex);
            assert!(
                matches!(normalize(&b), Err(CborError::DuplicateKey)),
                "normalize {hex}: {:?}",
                normalize(&b)
            );
            assert!(
                matches!(to_json(&b), Err(CborError::DuplicateKey)),
                "to_json {hex}"
            );
        }
        // a map with more keys than the linear check, one duplicate at the end
        let mut big = vec![0xb8, 40];
        for k in 0..39u8 {
            write_head(&mut big, 0, u64::from(k));
            big.push(0xf6);
        }
        big.extend_from_slice(&[0x05, 0xf6]);
        assert!(matches!(normalize(&big), Err(CborError::DuplicateKey)));
        big[1] = 39;
        big.truncate(big.len() - 2);
        assert!(normalize(&big).is_ok(), "39 distinct keys");
        // JSON cannot hold both 1 and "1": refused there, distinct keys for the typed path
        let mixed = unhex("a2 01 01 61 31 02");
        assert!(normalize(&mixed).is_ok());
        assert!(matches!(to_json(&mixed), Err(CborError::DuplicateKey)));
        assert!(CborError::DuplicateKey.is_structural());
        assert!(!CborError::TrailingBytes.is_structural());
    }

    #[test]
    fn non_canonical_forms_stay_accepted() {
        // DESIGN T5: lenient on canonical form — unsorted keys, non-shortest integers and
        // lengths, every float width, tags
        for hex in [
            "a3 0f 61 63 02 61 73 05 a0", // keys 15, 2, 5 (the Rust SDK's order)
            "a1 18 03 19 0001",           // {3 (1-byte head): 1 (2-byte head)}
            "a1 01 78 01 61",             // text length in a 1-byte head
            "a3 01 f9 3c00 02 fa 3f800000 03 fb 3ff0000000000000",
            "d9ffff a2 02 61 73 05 d8 18 41 00",
        ] {
            let b = unhex(hex);
            assert!(normalize(&b).is_ok(), "normalize {hex}");
            assert!(to_json(&b).is_ok(), "to_json {hex}");
        }
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
