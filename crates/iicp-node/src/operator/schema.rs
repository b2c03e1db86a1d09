//! The node profile's JSON schema (draft 2020-12) and a validator with field-level
//! errors, both from one table of [`NodeProfile`]'s members ([`PROFILE_FIELDS`]). A test
//! serialises a profile and checks that the table names exactly its members, so the
//! schema cannot drift from the loader; the validator also runs the loader itself.

use iicp_proto::error::json_kind as json_type;
use serde_json::{json, Map, Value};

use super::store::NodeProfile;

/// What a profile member holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FieldKind {
    /// Any string (`null` reads as empty).
    Text,
    /// A string of at most this many characters (`null` reads as empty).
    TextMax(usize),
    /// The profile name, `^[a-z0-9][a-z0-9._-]{0,62}$`.
    Name,
    /// A non-empty string, required.
    Id,
    /// An `http(s)://` URL, or empty (`null`): the default.
    Url,
    /// An intent URN, or empty.
    Intent,
    /// An IP address, `localhost`, or empty.
    Host,
    /// An integer in `min..=max`.
    Int {
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
    },
    /// `true` or `false`.
    Bool,
    /// An array of strings.
    Strings,
    /// A secret string or `null` (never printed).
    Secret,
    /// A node policy manifest (PROTOCOL.md §17.4) or `null`.
    Manifest,
}

/// One member of a node profile.
#[derive(Debug, Clone, Copy)]
pub struct FieldSpec {
    /// The JSON member name.
    pub name: &'static str,
    /// What it holds.
    pub kind: FieldKind,
    /// Whether the loader requires it.
    pub required: bool,
    /// What it means.
    pub description: &'static str,
}

const fn field(
    name: &'static str,
    kind: FieldKind,
    required: bool,
    description: &'static str,
) -> FieldSpec {
    FieldSpec {
        name,
        kind,
        required,
        description,
    }
}

/// Every member of `nodes/<name>.json` ([`NodeProfile`]), in file order.
pub const PROFILE_FIELDS: &[FieldSpec] = &[
    field("node_id", FieldKind::Id, true, "The node id registered with the directory (a UUID; `serve` uses its first 36 characters)."),
    field("operator_id", FieldKind::Text, false, "The operator identity that created the profile (base64 public key)."),
    field("name", FieldKind::Name, true, "The profile name, as given to `--node`; equals the file name without `.json`."),
    field("backend_url", FieldKind::Url, false, "Model server URL (empty: http://localhost:11434)."),
    field("model", FieldKind::Text, false, "Model to serve (empty: the backend's only model)."),
    field("intent", FieldKind::Intent, false, "Intent URN served (empty: urn:iicp:intent:llm:chat:v1)."),
    field("region", FieldKind::TextMax(64), false, "Region registered with the directory (empty: unknown)."),
    field("directory_url", FieldKind::Url, false, "Directory base URL (empty: https://iicp.network/api)."),
    field("max_concurrent", FieldKind::Int { min: 1, max: 256 }, false, "Tasks served at once; more are refused, never queued (default 4)."),
    field("port", FieldKind::Int { min: 0, max: 65535 }, false, "Port to listen on; the next free one of 64 is taken unless a public endpoint is set; 0 any (default 9484)."),
    field("host", FieldKind::Host, false, "Address to bind (empty: :: dual stack)."),
    field("public_endpoint", FieldKind::Url, false, "Externally reachable URL of the node (empty: detected)."),
    field("auto_detect_nat", FieldKind::Bool, false, "Detect NAT reachability at startup (written by other SDKs; `serve` detects unless told not to)."),
    field("external_ip_probe_url", FieldKind::Url, false, "External IPv4 probe URL (other SDKs)."),
    field("supported_receipt_profiles", FieldKind::Strings, false, "Credit receipt profiles offered."),
    field("node_token", FieldKind::Secret, false, "The directory's node token of the last registration (secret; kept by `serve`)."),
    field("node_hmac_key", FieldKind::Secret, false, "The node HMAC key of the last registration (secret)."),
    field("created_at", FieldKind::Text, false, "Creation time, YYYY-MM-DDTHH:MM:SSZ."),
    field("policy_manifest", FieldKind::Manifest, false, "The node's data-handling declaration (retention, training_use, jurisdiction, …), signed with the operator key at every registration (PROTOCOL.md §17.4); `serve --retention …` and `--policy-manifest FILE` override it."),
];

/// The `$id` of the schema.
pub const PROFILE_SCHEMA_ID: &str = "https://iicp.network/schemas/iicp-rs/node-profile-v1.json";

fn kind_schema(kind: FieldKind) -> Value {
    let nullable_string = || json!({"type": ["string", "null"]});
    match kind {
        FieldKind::Text => nullable_string(),
        FieldKind::TextMax(n) => json!({"type": ["string", "null"], "maxLength": n}),
        FieldKind::Name => json!({"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,62}$"}),
        FieldKind::Id => json!({"type": "string", "minLength": 1}),
        FieldKind::Url => json!({
            "type": ["string", "null"],
            "anyOf": [{"const": ""}, {"type": "null"}, {"format": "uri", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://"}],
        }),
        FieldKind::Intent => json!({
            "type": ["string", "null"],
            "anyOf": [{"const": ""}, {"type": "null"}, {"pattern": "^urn:iicp:intent:"}],
        }),
        FieldKind::Host => json!({
            "type": ["string", "null"],
            "anyOf": [{"const": ""}, {"type": "null"}, {"const": "localhost"}, {"format": "ipv4"}, {"format": "ipv6"}],
        }),
        FieldKind::Int { min, max } => json!({"type": "integer", "minimum": min, "maximum": max}),
        FieldKind::Bool => json!({"type": "boolean"}),
        FieldKind::Strings => json!({"type": "array", "items": {"type": "string"}}),
        FieldKind::Secret => json!({"type": ["string", "null"], "writeOnly": true}),
        FieldKind::Manifest => json!({
            "type": ["object", "null"],
            "properties": {
                "jurisdiction": {"type": ["string", "null"]},
                "training_use": {"enum": ["none", "opt_in", "provider_defined", null]},
                "remote_executor_can_read_prompt": {"type": "boolean"},
                "retention": {"type": ["object", "null"], "properties": {
                    "task_payload": {"enum": ["none", "transient", "provider_defined", null]},
                    "logs_days": {"type": ["integer", "null"], "minimum": 0},
                }},
                "subprocessors": {"type": ["array", "null"], "items": {"type": "string"}},
            },
        }),
    }
}

/// The JSON schema (draft 2020-12) of a node profile, from [`PROFILE_FIELDS`].
pub fn profile_schema() -> Value {
    let mut props = Map::new();
    for f in PROFILE_FIELDS {
        let mut s = kind_schema(f.kind);
        if let Some(o) = s.as_object_mut() {
            o.insert("description".into(), Value::from(f.description));
        }
        props.insert(f.name.to_owned(), s);
    }
    let required: Vec<&str> = PROFILE_FIELDS
        .iter()
        .filter(|f| f.required)
        .map(|f| f.name)
        .collect();
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": PROFILE_SCHEMA_ID,
        "title": "IICP node profile",
        "description": "A saved node profile, ~/.iicp/nodes/NAME.json (written by `iicp init`, read by `iicp serve --node NAME`). The Python and TypeScript SDKs reject unknown members.",
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": false,
    })
}

/// One problem in a profile: where (a JSON pointer) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldIssue {
    /// JSON pointer to the member (`""`: the document).
    pub pointer: String,
    /// What is wrong (never the value of a secret).
    pub message: String,
}

impl std::fmt::Display for FieldIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = if self.pointer.is_empty() {
            "(document)"
        } else {
            &self.pointer
        };
        write!(f, "{at}: {}", self.message)
    }
}

/// The problem with `v` as a `kind`, if any.
fn check(kind: FieldKind, v: &Value) -> Option<String> {
    let string = |v: &Value| -> Result<String, String> {
        match v {
            Value::Null => Ok(String::new()),
            Value::String(s) => Ok(s.clone()),
            other => Err(format!("expected a string, got {}", json_type(other))),
        }
    };
    let r: Result<(), String> = (|| match kind {
        FieldKind::Text | FieldKind::Secret => string(v).map(drop),
        FieldKind::TextMax(n) => {
            let s = string(v)?;
            let len = s.chars().count();
            if len > n {
                return Err(format!("at most {n} characters, got {len}"));
            }
            Ok(())
        }
        FieldKind::Id => {
            let s = v
                .as_str()
                .ok_or_else(|| format!("expected a string, got {}", json_type(v)))?;
            if s.trim().is_empty() {
                return Err("must not be empty".into());
            }
            Ok(())
        }
        FieldKind::Name => {
            let s = v
                .as_str()
                .ok_or_else(|| format!("expected a string, got {}", json_type(v)))?;
            if !super::store::valid_node_name(s) {
                return Err(format!(
                    "invalid node name {:?}: use 1-63 of a-z 0-9 . _ - starting with a letter or digit",
                    s.chars().take(70).collect::<String>()
                ));
            }
            Ok(())
        }
        FieldKind::Url => {
            let s = string(v)?;
            let s = s.trim();
            if s.is_empty() {
                return Ok(());
            }
            iicp_proto::endpoint::parse_url(s, iicp_proto::endpoint::HTTP_SCHEMES)
                .map(drop)
                .map_err(|e| format!("not an http(s) URL ({e})"))
        }
        FieldKind::Intent => {
            let s = string(v)?;
            let s = s.trim();
            if s.is_empty() {
                return Ok(());
            }
            iicp_proto::intent::Intent::new(s)
                .map(drop)
                .map_err(|e| format!("not an intent URN ({e})"))
        }
        FieldKind::Host => {
            let s = string(v)?;
            let h = s.trim().trim_start_matches('[').trim_end_matches(']');
            if h.is_empty() || h == "localhost" || h.parse::<std::net::IpAddr>().is_ok() {
                return Ok(());
            }
            Err(format!("not an IP address or localhost: {s:?}"))
        }
        FieldKind::Int { min, max } => {
            let n = v.as_u64().ok_or_else(|| match v {
                Value::Number(n) if n.is_i64() => {
                    format!("{n} is out of range {min}-{max}")
                }
                Value::Number(n) => format!("expected an integer, got {n}"),
                other => format!("expected an integer, got {}", json_type(other)),
            })?;
            if !(min..=max).contains(&n) {
                return Err(format!("{n} is out of range {min}-{max}"));
            }
            Ok(())
        }
        FieldKind::Bool => match v {
            Value::Bool(_) => Ok(()),
            other => Err(format!("expected a boolean, got {}", json_type(other))),
        },
        FieldKind::Manifest => {
            if v.is_null() {
                return Ok(());
            }
            iicp_proto::crypto::manifest::validate(v).map_err(|e| e.to_string())
        }
        FieldKind::Strings => {
            let a = v
                .as_array()
                .ok_or_else(|| format!("expected an array of strings, got {}", json_type(v)))?;
            match a.iter().position(|x| !x.is_string()) {
                Some(i) => Err(format!("item {i} is not a string")),
                None => Ok(()),
            }
        }
    })();
    r.err()
}

fn pointer(name: &str) -> String {
    format!("/{}", name.replace('~', "~0").replace('/', "~1"))
}

/// Checks a profile document member by member: unknown members, wrong types, values
/// out of range, bad URLs, intents and hosts, a missing required member, and (when
/// `file_name` is given) a `name` that differs from the file's. Then the loader itself
/// reads it, so what passes here loads. An empty list means valid.
pub fn validate_profile(doc: &Value, file_name: Option<&str>) -> Vec<FieldIssue> {
    let mut issues = Vec::new();
    let Some(obj) = doc.as_object() else {
        return vec![FieldIssue {
            pointer: String::new(),
            message: format!("expected a JSON object, got {}", json_type(doc)),
        }];
    };
    for key in obj.keys() {
        if !PROFILE_FIELDS.iter().any(|f| f.name == key) {
            issues.push(FieldIssue {
                pointer: pointer(key),
                message: "unknown field (the other SDKs' loaders reject it)".into(),
            });
        }
    }
    for f in PROFILE_FIELDS {
        match obj.get(f.name) {
            None if f.required => issues.push(FieldIssue {
                pointer: pointer(f.name),
                message: "missing required field".into(),
            }),
            None => {}
            Some(v) => {
                if let Some(message) = check(f.kind, v) {
                    issues.push(FieldIssue {
                        pointer: pointer(f.name),
                        message,
                    });
                }
            }
        }
    }
    if let (Some(stem), Some(Value::String(name))) = (file_name, obj.get("name")) {
        if stem != name {
            issues.push(FieldIssue {
                pointer: "/name".into(),
                message: format!("{name:?} differs from the file name {stem:?}.json"),
            });
        }
    }
    if issues.is_empty() {
        if let Err(e) = serde_json::from_value::<NodeProfile>(doc.clone()) {
            issues.push(FieldIssue {
                pointer: String::new(),
                // serde names the member and the expected type, never a secret's value
                message: format!("the profile loader refuses it: {}", scrub(&e.to_string())),
            });
        }
    }
    issues
}

/// A serde message without quoted values (a secret may sit in one).
fn scrub(msg: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for c in msg.chars() {
        if c == '"' {
            quoted = !quoted;
            if quoted {
                out.push_str("\"…");
            } else {
                out.push('"');
            }
        } else if !quoted {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Value {
        let mut p = NodeProfile::new("n1", "op", 1_700_000_000);
        // optional members are written only when set
        p.policy_manifest = Some(Map::new());
        serde_json::to_value(p).expect("json")
    }

    #[test]
    fn the_schema_names_every_member_of_the_profile_and_nothing_else() {
        let profile = valid();
        let members: Vec<&String> = profile.as_object().expect("object").keys().collect();
        let schema = profile_schema();
        let props = schema["properties"].as_object().expect("properties");
        for m in &members {
            let p = &props[m.as_str()];
            assert!(p.is_object(), "{m} missing from the schema");
            assert!(
                p["description"].as_str().is_some_and(|d| !d.is_empty()),
                "{m}"
            );
            assert!(p.get("type").is_some(), "{m} has no type");
        }
        assert_eq!(
            props.len(),
            members.len(),
            "the schema names members the profile lacks"
        );
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["properties"]["port"]["maximum"], 65535);
        assert_eq!(schema["required"], json!(["node_id", "name"]));
    }

    #[test]
    fn a_fresh_profile_validates() {
        assert_eq!(validate_profile(&valid(), Some("n1")), vec![]);
    }

    #[test]
    fn field_level_errors_name_the_member() {
        let mut p = valid();
        p["port"] = json!(70000);
        p["max_concurrent"] = json!(0);
        p["directory_url"] = json!("ftp://x");
        p["intent"] = json!("chat");
        p["host"] = json!("example.com");
        p["auto_detect_nat"] = json!("yes");
        p["node_token"] = json!(12);
        p["backend_type"] = json!("vllm");
        p["supported_receipt_profiles"] = json!(["a", 1]);
        let issues = validate_profile(&p, Some("other"));
        let at = |ptr: &str| {
            issues
                .iter()
                .find(|i| i.pointer == ptr)
                .map(|i| i.message.clone())
                .unwrap_or_else(|| panic!("no issue at {ptr}: {issues:?}"))
        };
        assert_eq!(at("/port"), "70000 is out of range 0-65535");
        assert_eq!(at("/max_concurrent"), "0 is out of range 1-256");
        assert!(at("/directory_url").starts_with("not an http(s) URL"));
        assert!(at("/intent").starts_with("not an intent URN"));
        assert!(at("/host").contains("example.com"));
        assert_eq!(at("/auto_detect_nat"), "expected a boolean, got a string");
        assert_eq!(at("/node_token"), "expected a string, got a number");
        assert!(at("/backend_type").starts_with("unknown field"));
        assert_eq!(at("/supported_receipt_profiles"), "item 1 is not a string");
        assert!(at("/name").contains("differs from the file name"));
        assert_eq!(issues.len(), 10, "{issues:?}");
    }

    #[test]
    fn missing_and_non_object() {
        let issues = validate_profile(&json!({"name": "n1"}), None);
        assert_eq!(
            issues,
            vec![FieldIssue {
                pointer: "/node_id".into(),
                message: "missing required field".into()
            }]
        );
        assert_eq!(validate_profile(&json!([1]), None)[0].pointer, "");
        assert_eq!(pointer("a/b~c"), "/a~1b~0c");
        assert_eq!(
            scrub("invalid value: \"s3cret\", expected x"),
            "invalid value: \"…\", expected x"
        );
    }
}
