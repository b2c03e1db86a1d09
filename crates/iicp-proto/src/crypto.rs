//! Pure, IO-free cryptography used on the IICP wire.
//!
//! Every function here is deterministic given its inputs: randomness comes from an
//! injected `rng: &mut (impl CryptoRng + RngCore)` and time checks take `now_unix`
//! (seconds since the Unix epoch). Nothing reads a clock, the environment or a file.
//! Secrets (keys, seeds, passphrases, plaintexts) are zeroized on drop where this crate
//! owns them, and never appear in `Debug` output or error messages.
//!
//! | module | implements |
//! |---|---|
//! | [`canonical`] | canonical (sorted-key, compact) JSON — PROTOCOL.md §17.2, §17.6, §19 T26 |
//! | [`sign`] | Ed25519 operator identity: delegation, rename, self-service — §17.1–§17.3 |
//! | [`token`] | directory-signed tokens (consumer token, dispatch and relay tickets) — §17.5, §8.5, §8.10, §14.6 |
//! | [`cx`] | IICP-CX Tier 1 request and response encryption — §16 |
//! | [`manifest`] | signed node policy manifests: canonical bytes, signing, verification, identity levels — §17.4 |
//! | [`mac`] | heartbeat challenge HMAC, CIP receipt HMAC, constant-time equality — §8.3, §8.11 |
//! | [`atrest`] | operator seed at-rest encryption (PBKDF2 + AES-256-GCM) — §17.1, DESIGN §4.14 |

pub mod atrest;
pub mod canonical;
pub mod cx;
mod encoding;
pub mod mac;
pub mod manifest;
pub mod sign;
pub mod token;
