//! The 12-byte native frame header and the frame decoder (PROTOCOL.md §10.1–§10.2,
//! `fixtures/native-framing-v1.json`).
//!
//! ```text
//! offset size field     rule
//! 0      4    magic     "IICP" (0x49 0x49 0x43 0x50)
//! 4      1    version   0x01; high 4 bits reserved (send 0, ignore on receive)
//! 5      1    type      message type; the decoder accepts any byte (dispatch decides)
//! 6      1    flags     bit0 COMPRESSED, bit1 FRAGMENTED; other bits ignored on receive
//! 7      1    reserved  send 0; ignored on receive
//! 8      4    length    u32 big-endian payload length (header not included)
//! ```
//!
//! [`Frame::decode`] keeps "need more bytes" ([`Decoded::Incomplete`]) apart from
//! "malformed" ([`FrameError`]) and checks the announced length against the limit
//! before the caller allocates or waits for a single payload byte.

use std::fmt;

/// The four magic bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"IICP";
/// Length of the frame header in bytes.
pub const HEADER_LEN: usize = 12;
/// The only framing version that exists.
pub const VERSION: u8 = 1;
/// Largest payload a single frame may carry (16 MiB, PROTOCOL.md §10.2).
pub const MAX_PAYLOAD: u32 = 16 * 1024 * 1024;

/// A message type byte. Any byte is representable; [`MessageType::class`] says what the
/// spec makes of it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageType(pub u8);

impl MessageType {
    /// INIT, client → server handshake.
    pub const INIT: Self = Self(0x01);
    /// ACK, server → client handshake answer.
    pub const ACK: Self = Self(0x02);
    /// DISCOVER.
    pub const DISCOVER: Self = Self(0x03);
    /// SUB_PROTOCOL.
    pub const SUB_PROTOCOL: Self = Self(0x04);
    /// CALL, a task request.
    pub const CALL: Self = Self(0x05);
    /// RESPONSE, a task result.
    pub const RESPONSE: Self = Self(0x06);
    /// CLOSE.
    pub const CLOSE: Self = Self(0x07);
    /// FEEDBACK.
    pub const FEEDBACK: Self = Self(0x08);
    /// PING.
    pub const PING: Self = Self(0x09);
    /// PONG.
    pub const PONG: Self = Self(0x0A);
    /// CONTROL (spec meaning of 0x0B on task ports).
    pub const CONTROL: Self = Self(0x0B);
    /// ADVERTISE (spec meaning of 0x0C on task ports).
    pub const ADVERTISE: Self = Self(0x0C);
    /// OBSERVE.
    pub const OBSERVE: Self = Self(0x0D);
    /// TELEMETRY.
    pub const TELEMETRY: Self = Self(0x0E);
    /// RELAY_BIND: the SDKs' meaning of 0x0B, only on relay-accept connections (§19 T4).
    pub const RELAY_BIND: Self = Self(0x0B);
    /// RELAY_ACK: the SDKs' meaning of 0x0C, only on relay-accept connections (§19 T4).
    pub const RELAY_ACK: Self = Self(0x0C);

    /// What the spec says about this byte (PROTOCOL.md §3.1).
    pub fn class(self) -> TypeClass {
        match self.0 {
            0x00 | 0xFF => TypeClass::Invalid,
            0x01..=0x0E => TypeClass::Core,
            0x0F..=0xEF => TypeClass::Reserved,
            0xF0..=0xFE => TypeClass::Custom,
        }
    }

    /// The spec name of a core type, `None` otherwise.
    pub fn name(self) -> Option<&'static str> {
        const NAMES: [&str; 14] = [
            "INIT",
            "ACK",
            "DISCOVER",
            "SUB_PROTOCOL",
            "CALL",
            "RESPONSE",
            "CLOSE",
            "FEEDBACK",
            "PING",
            "PONG",
            "CONTROL",
            "ADVERTISE",
            "OBSERVE",
            "TELEMETRY",
        ];
        match self.0 {
            0x01..=0x0E => Some(NAMES[usize::from(self.0) - 1]),
            _ => None,
        }
    }
}

impl fmt::Debug for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}"),
            None => write!(f, "MessageType({:#04x})", self.0),
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// How the spec classifies a type byte (PROTOCOL.md §3.1, §10.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypeClass {
    /// 0x00 or 0xFF: never valid (`invalid_type`).
    Invalid,
    /// 0x01–0x0E: the 14 core types.
    Core,
    /// 0x0F–0xEF: reserved for future IICP use (`unknown_type`).
    Reserved,
    /// 0xF0–0xFE: custom types, valid only after negotiation (`unsupported_extension`).
    Custom,
}

/// Frame flag bits (PROTOCOL.md §10.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(pub u8);

impl Flags {
    /// Bit 0: the payload is gzip-compressed.
    pub const COMPRESSED: u8 = 0x01;
    /// Bit 1: the payload is a fragment.
    pub const FRAGMENTED: u8 = 0x02;

    /// Whether the COMPRESSED bit is set.
    pub fn compressed(self) -> bool {
        self.0 & Self::COMPRESSED != 0
    }

    /// Whether the FRAGMENTED bit is set.
    pub fn fragmented(self) -> bool {
        self.0 & Self::FRAGMENTED != 0
    }
}

/// A decoded 12-byte frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Framing version (low 4 bits of byte 4; the reserved high bits are dropped).
    pub version: u8,
    /// Message type byte.
    pub msg_type: MessageType,
    /// Flag bits as received (unknown bits preserved, to be ignored).
    pub flags: Flags,
    /// The reserved byte as received (ignored).
    pub reserved: u8,
    /// Payload length in bytes.
    pub length: u32,
}

impl FrameHeader {
    /// A version-1 header with no flags.
    pub fn new(msg_type: MessageType, length: u32) -> Self {
        Self {
            version: VERSION,
            msg_type,
            flags: Flags(0),
            reserved: 0,
            length,
        }
    }

    /// The 12 header bytes. Reserved bits and the reserved byte are sent as zero.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&MAGIC);
        h[4] = self.version & 0x0F;
        h[5] = self.msg_type.0;
        h[6] = self.flags.0 & (Flags::COMPRESSED | Flags::FRAGMENTED);
        h[7] = 0;
        h[8..].copy_from_slice(&self.length.to_be_bytes());
        h
    }

    /// Parses a header from the first 12 bytes of `buf`.
    ///
    /// Returns `Ok(None)` when fewer than 12 bytes are available but those present are
    /// consistent with the magic, so a caller can tell a bad peer after one byte.
    pub fn parse(buf: &[u8]) -> Result<Option<Self>, FrameError> {
        let n = buf.len().min(4);
        if buf[..n] != MAGIC[..n] {
            return Err(FrameError::InvalidMagic);
        }
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        Ok(Some(Self {
            version: buf[4] & 0x0F,
            msg_type: MessageType(buf[5]),
            flags: Flags(buf[6]),
            reserved: buf[7],
            length: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
        }))
    }
}

/// A frame that can never become valid, whatever bytes follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame does not start with `IICP`.
    #[error("invalid magic")]
    InvalidMagic,
    /// The announced payload length exceeds the limit.
    #[error("frame payload length {length} exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        length: u32,
        /// Limit in force.
        max: u32,
    },
    /// Fewer than 12 bytes where a complete frame was required ([`Frame::parse_exact`]).
    #[error("truncated header")]
    TruncatedHeader,
    /// Fewer payload bytes than announced where a complete frame was required.
    #[error("truncated payload")]
    TruncatedPayload,
}

impl FrameError {
    /// The fixture / CLOSE vocabulary for this error (`invalid_magic`, `frame_too_large`, …).
    pub fn code(&self) -> &'static str {
        match self {
            FrameError::InvalidMagic => "invalid_magic",
            FrameError::TooLarge { .. } => "frame_too_large",
            FrameError::TruncatedHeader => "truncated_header",
            FrameError::TruncatedPayload => "truncated_payload",
        }
    }
}

/// A complete frame borrowed from the receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The header.
    pub header: FrameHeader,
    /// Exactly `header.length` payload bytes.
    pub payload: &'a [u8],
}

/// Result of trying to decode a frame from the front of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole frame, and how many buffer bytes it used.
    Complete {
        /// The frame.
        frame: Frame<'a>,
        /// Bytes consumed from the buffer (`12 + length`).
        consumed: usize,
    },
    /// More bytes are needed. `header` is known once 12 bytes arrived (its length was
    /// already checked against the limit); `needed` is the total frame size when known,
    /// otherwise the header size.
    Incomplete {
        /// The header, when complete.
        header: Option<FrameHeader>,
        /// Total bytes the frame will occupy when known, or [`HEADER_LEN`].
        needed: usize,
    },
}

impl<'a> Frame<'a> {
    /// Decodes one frame from the front of `buf`, with payloads up to `max_payload`.
    pub fn decode(buf: &'a [u8], max_payload: u32) -> Result<Decoded<'a>, FrameError> {
        let Some(header) = FrameHeader::parse(buf)? else {
            return Ok(Decoded::Incomplete {
                header: None,
                needed: HEADER_LEN,
            });
        };
        if header.length > max_payload {
            return Err(FrameError::TooLarge {
                length: header.length,
                max: max_payload,
            });
        }
        let total = HEADER_LEN + header.length as usize;
        if buf.len() < total {
            return Ok(Decoded::Incomplete {
                header: Some(header),
                needed: total,
            });
        }
        Ok(Decoded::Complete {
            frame: Frame {
                header,
                payload: &buf[HEADER_LEN..total],
            },
            consumed: total,
        })
    }

    /// Decodes `buf` as one complete frame (the fixture contract): an incomplete frame
    /// is an error. Returns the frame and the bytes consumed.
    pub fn parse_exact(buf: &'a [u8], max_payload: u32) -> Result<(Frame<'a>, usize), FrameError> {
        match Self::decode(buf, max_payload)? {
            Decoded::Complete { frame, consumed } => Ok((frame, consumed)),
            Decoded::Incomplete { header: None, .. } => Err(FrameError::TruncatedHeader),
            Decoded::Incomplete {
                header: Some(_), ..
            } => Err(FrameError::TruncatedPayload),
        }
    }
}

/// Appends a whole frame (header + payload) to `out`.
///
/// # Errors
/// [`FrameError::TooLarge`] when the payload exceeds [`MAX_PAYLOAD`].
pub fn encode_frame(
    msg_type: MessageType,
    flags: Flags,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let length = check_len(payload.len())?;
    let mut header = FrameHeader::new(msg_type, length);
    header.flags = flags;
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(payload);
    Ok(())
}

/// Starts a frame in `out` whose payload the caller appends next; finish it with
/// [`finish_frame`]. Avoids encoding the payload into a temporary buffer.
pub fn begin_frame(msg_type: MessageType, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&FrameHeader::new(msg_type, 0).encode());
    start
}

/// Patches the length of the frame started at `start` by [`begin_frame`].
///
/// # Errors
/// [`FrameError::TooLarge`] (and the partial frame is removed from `out`) when the
/// payload exceeds [`MAX_PAYLOAD`].
pub fn finish_frame(out: &mut Vec<u8>, start: usize) -> Result<(), FrameError> {
    let len = out.len() - start - HEADER_LEN;
    match check_len(len) {
        Ok(length) => {
            out[start + 8..start + HEADER_LEN].copy_from_slice(&length.to_be_bytes());
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

fn check_len(len: usize) -> Result<u32, FrameError> {
    match u32::try_from(len) {
        Ok(l) if l <= MAX_PAYLOAD => Ok(l),
        _ => Err(FrameError::TooLarge {
            length: u32::try_from(len).unwrap_or(u32::MAX),
            max: MAX_PAYLOAD,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = FrameHeader::new(MessageType::CALL, 300);
        let bytes = h.encode();
        assert_eq!(hex::encode(bytes), "49494350010500000000012c");
        assert_eq!(FrameHeader::parse(&bytes), Ok(Some(h)));
    }

    #[test]
    fn magic_is_checked_byte_by_byte() {
        assert_eq!(FrameHeader::parse(b""), Ok(None));
        assert_eq!(FrameHeader::parse(b"II"), Ok(None));
        assert_eq!(FrameHeader::parse(b"IX"), Err(FrameError::InvalidMagic));
        assert_eq!(
            FrameHeader::parse(b"GET / HTTP/1.1\r\n"),
            Err(FrameError::InvalidMagic)
        );
    }

    #[test]
    fn oversize_length_rejected_from_header_alone() {
        let mut h = FrameHeader::new(MessageType::CALL, u32::MAX)
            .encode()
            .to_vec();
        assert_eq!(
            Frame::decode(&h, MAX_PAYLOAD),
            Err(FrameError::TooLarge {
                length: u32::MAX,
                max: MAX_PAYLOAD
            })
        );
        h[8..].copy_from_slice(&(MAX_PAYLOAD + 1).to_be_bytes());
        assert!(Frame::decode(&h, MAX_PAYLOAD).is_err());
        h[8..].copy_from_slice(&MAX_PAYLOAD.to_be_bytes());
        assert!(
            matches!(Frame::decode(&h, MAX_PAYLOAD), Ok(Decoded::Incomplete { header: Some(_), needed }) if needed == HEADER_LEN + MAX_PAYLOAD as usize)
        );
    }

    #[test]
    fn incremental_decode() {
        let mut wire = Vec::new();
        encode_frame(MessageType::CALL, Flags(0), &[0xa1, 0x01, 0x01], &mut wire).expect("encode");
        for cut in 0..wire.len() {
            assert!(
                matches!(
                    Frame::decode(&wire[..cut], MAX_PAYLOAD),
                    Ok(Decoded::Incomplete { .. })
                ),
                "cut {cut}"
            );
        }
        wire.extend_from_slice(b"IICP");
        match Frame::decode(&wire, MAX_PAYLOAD) {
            Ok(Decoded::Complete { frame, consumed }) => {
                assert_eq!(consumed, 15);
                assert_eq!(frame.payload, &[0xa1, 0x01, 0x01]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn begin_finish_patches_length() {
        let mut out = vec![0xEE];
        let start = begin_frame(MessageType::PONG, &mut out);
        out.push(0xa0);
        finish_frame(&mut out, start).expect("finish");
        assert_eq!(hex::encode(&out), "ee49494350010a000000000001a0");
    }

    #[test]
    fn type_classes() {
        assert_eq!(MessageType(0).class(), TypeClass::Invalid);
        assert_eq!(MessageType(0xFF).class(), TypeClass::Invalid);
        assert_eq!(MessageType::TELEMETRY.class(), TypeClass::Core);
        assert_eq!(MessageType(0x0F).class(), TypeClass::Reserved);
        assert_eq!(MessageType(0xEF).class(), TypeClass::Reserved);
        assert_eq!(MessageType(0xF0).class(), TypeClass::Custom);
        assert_eq!(format!("{:?}", MessageType::PONG), "PONG");
        assert_eq!(format!("{}", MessageType(0x42)), "MessageType(0x42)");
    }
}
