//! Base64 and hex helpers shared by the crypto modules (PROTOCOL.md §2.4).
//!
//! Output is always the canonical form the protocol names (standard padded base64,
//! base64url without padding, lowercase hex); input is accepted with or without padding.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;

/// Standard alphabet; padded on output, padding optional on input.
const STANDARD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// URL-safe alphabet; unpadded on output, padding optional on input.
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Standard padded base64.
pub(crate) fn b64_encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Standard base64, padding optional.
pub(crate) fn b64_decode(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text.trim()).ok()
}

/// base64url without padding.
pub(crate) fn b64url_encode(bytes: &[u8]) -> String {
    URL_SAFE.encode(bytes)
}

/// base64url, padding optional.
pub(crate) fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE.decode(text).ok()
}

/// Decodes into a fixed-size array, `None` on bad encoding or wrong length.
pub(crate) fn to_array<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    <[u8; N]>::try_from(bytes).ok()
}

/// True when `s` is exactly `len` lowercase hex digits.
pub(crate) fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_is_optional_on_input() {
        assert_eq!(b64_decode("YQ==").unwrap(), b"a");
        assert_eq!(b64_decode("YQ").unwrap(), b"a");
        assert_eq!(b64url_decode("_-8").unwrap(), [0xff, 0xef]);
        assert_eq!(b64url_decode("_-8=").unwrap(), [0xff, 0xef]);
        assert!(b64url_decode("+/8").is_none());
        assert!(b64_decode("!!").is_none());
        assert_eq!(b64url_encode(&[0xff, 0xef]), "_-8");
        assert_eq!(b64_encode(b"a"), "YQ==");
    }

    #[test]
    fn lower_hex() {
        assert!(is_lower_hex("0a", 2));
        assert!(!is_lower_hex("0A", 2));
        assert!(!is_lower_hex("0a0", 2));
    }
}
