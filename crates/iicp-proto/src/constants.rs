//! Protocol constants every crate names, declared once (PROTOCOL.md §2, §8, §16).

/// The chat intent (`llm:chat:v1`), what the CLI, the dev mesh and the backends serve by
/// default.
pub const CHAT_INTENT: &str = "urn:iicp:intent:llm:chat:v1";

/// The public mesh directory (PROTOCOL.md §8): the default base URL, every directory path
/// derived from it.
pub const DEFAULT_DIRECTORY_URL: &str = "https://iicp.network/api";

/// The node port (HTTP and native on one port, ADR 0004).
pub const DEFAULT_PORT: u16 = 9484;

/// The relay accept port of a relay-capable node (PROTOCOL.md §14).
pub const DEFAULT_RELAY_ACCEPT_PORT: u16 = 9485;

/// The IICP-CX feature a node advertises when it accepts encrypted native CALLs
/// (ADR 0005).
pub const NATIVE_CX_V1: &str = "native_cx_v1";

/// The IICP-CX feature a node advertises when it seals streamed chunks one by one
/// (ADR 0013).
pub const CX_STREAM_V1: &str = "cx_stream_v1";

/// The `X-IICP-Version` header a client sends with directory and task requests.
pub const VERSION_HEADER: &str = "x-iicp-version";

/// The protocol version sent in [`VERSION_HEADER`] (what the reference SDKs send).
pub const PROTOCOL_VERSION_HEADER: &str = "1.5";
