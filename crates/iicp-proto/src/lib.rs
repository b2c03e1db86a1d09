//! `iicp-proto`: the IO-free bottom layer of the IICP workspace.
//!
//! What it is: the wire vocabulary of IICP — JSON bodies exchanged with nodes and
//! directories, the intent URN type, protocol error codes as data, the 12-byte native
//! frame codec, the integer-keyed CBOR messages of the native transport, the sans-IO
//! native session state machine, and the pure cryptography used on the wire (IICP-CX
//! sealing, heartbeat HMAC, Ed25519 signatures over canonical JSON, directory-signed
//! tokens).
//!
//! What it is not: it performs no IO. There is no tokio, no socket, no HTTP client, no
//! clock read, no environment or file access and no ambient randomness here. Callers
//! pass the current time (`now`) and a random number generator explicitly.
//!
//! Place in the crate graph (see `docs/architecture.md`): layer L0, depended on by every
//! other crate, depending on none of them.
//!
//! Spec map: see `docs/spec-map.md`. Every module cites the section of
//! `PROTOCOL.md` (the protocol digest) it implements.
#![forbid(unsafe_code)]

pub mod cbor;
pub mod constants;
pub mod crypto;
pub mod directory;
pub mod endpoint;
pub mod error;
pub mod frame;
pub mod ids;
pub mod intent;
pub mod lifecycle;
pub mod limit;
pub mod message;
pub mod result;
pub mod secret;
pub mod session;
pub mod task;
pub mod time;
