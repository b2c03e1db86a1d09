//! The configuration root and its files (SEED-SDK.md §4.1): `operator.json`,
//! `nodes/<name>.json`, and this SDK's own `cx/<node_id>.json` (the persisted IICP-CX
//! key) and `auth/<name>.json` (who may call the node) — the other SDKs' node-profile
//! loaders reject unknown members, so these live apart.
//!
//! Every file is pretty JSON (2-space indent, trailing newline) written atomically: a
//! temporary file with mode 0600 in the same directory, fsynced, then renamed over the
//! target — a crash leaves the old file or the new one, never a truncated key.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use iicp_proto::crypto::cx::CxKeyPair;
use iicp_proto::secret::Secret;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::{nullable_string, OperatorError, OperatorFile, OperatorIdentity};
use crate::access::AuthMode;

/// `port` written by `init` (the node default, 9484).
pub const DEFAULT_PROFILE_PORT: u16 = iicp_proto::constants::DEFAULT_PORT;

/// The configuration root: `$IICP_HOME` (leading `~` expanded), else `~/.iicp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// A root at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root from `IICP_HOME` and the user's home directory (`HOME`, or
    /// `USERPROFILE` on Windows).
    ///
    /// # Errors
    /// [`OperatorError::NoHome`] when neither is set.
    pub fn from_env() -> Result<Self, OperatorError> {
        let home = std::env::var_os("HOME")
            .or_else(|| std::env::var_os("USERPROFILE"))
            .filter(|h| !h.is_empty())
            .map(PathBuf::from);
        let iicp_home = std::env::var("IICP_HOME").ok().filter(|h| !h.is_empty());
        Self::resolve(iicp_home.as_deref(), home)
    }

    /// [`Home::from_env`] with the values given.
    ///
    /// # Errors
    /// [`OperatorError::NoHome`] when the root cannot be determined.
    pub fn resolve(iicp_home: Option<&str>, home: Option<PathBuf>) -> Result<Self, OperatorError> {
        match iicp_home {
            Some("~") => home.map(Self::new).ok_or(OperatorError::NoHome),
            Some(h) => match h.strip_prefix("~/") {
                Some(rest) => home
                    .map(|d| Self::new(d.join(rest)))
                    .ok_or(OperatorError::NoHome),
                None => Ok(Self::new(h)),
            },
            None => home
                .map(|d| Self::new(d.join(".iicp")))
                .ok_or(OperatorError::NoHome),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/operator.json`.
    pub fn operator_path(&self) -> PathBuf {
        self.root.join("operator.json")
    }

    /// `<root>/nodes/<name>.json`.
    ///
    /// # Errors
    /// [`OperatorError::NodeName`] unless `name` matches `^[a-z0-9][a-z0-9._-]{0,62}$`.
    pub fn node_path(&self, name: &str) -> Result<PathBuf, OperatorError> {
        if !valid_node_name(name) {
            return Err(OperatorError::NodeName(name.chars().take(70).collect()));
        }
        Ok(self.root.join("nodes").join(format!("{name}.json")))
    }

    /// `<root>/cx/<node_id>.json` (node ids with other characters than `[A-Za-z0-9._-]`
    /// are hex-encoded).
    pub fn cx_key_path(&self, node_id: &str) -> PathBuf {
        let stem = node_file_stem(node_id);
        self.root.join("cx").join(format!("{stem}.json"))
    }

    /// Loads the operator file; `None` when there is none.
    ///
    /// # Errors
    /// [`OperatorError::InsecurePermissions`] when the file is group- or world-readable
    /// (Unix), [`OperatorError::Read`], [`OperatorError::Parse`].
    pub fn load_operator(&self) -> Result<Option<OperatorFile>, OperatorError> {
        let path = self.operator_path();
        let Some(bytes) = read_if_exists(&path)? else {
            return Ok(None);
        };
        check_private(&path)?;
        parse(&path, "operator", &bytes).map(Some)
    }

    /// Loads the operator file.
    ///
    /// # Errors
    /// [`OperatorError::NotFound`] when there is none, else as [`Home::load_operator`].
    pub fn require_operator(&self) -> Result<OperatorFile, OperatorError> {
        self.load_operator()?
            .ok_or_else(|| OperatorError::NotFound(self.operator_path()))
    }

    /// Writes the operator file atomically with mode 0600.
    ///
    /// # Errors
    /// [`OperatorError::Write`].
    pub fn save_operator(&self, file: &OperatorFile) -> Result<PathBuf, OperatorError> {
        let path = self.operator_path();
        let bytes = Zeroizing::new(to_pretty(file));
        write_private_atomic(&path, &bytes).map_err(|source| OperatorError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// Creates and saves a new key-backed identity. An existing file is never replaced
    /// unless `force`.
    ///
    /// # Errors
    /// [`OperatorError::AlreadyExists`], [`OperatorError::DisplayName`],
    /// [`OperatorError::Write`].
    pub fn init_operator(
        &self,
        display_name: &str,
        contact: &str,
        now_unix: u64,
        force: bool,
    ) -> Result<OperatorFile, OperatorError> {
        let path = self.operator_path();
        if !force && path.exists() {
            return Err(OperatorError::AlreadyExists(path));
        }
        let file = OperatorFile::generate(display_name, contact, now_unix)?;
        self.save_operator(&file)?;
        Ok(file)
    }

    /// Loads a saved node profile; `None` when there is none.
    ///
    /// # Errors
    /// [`OperatorError::NodeName`], [`OperatorError::Read`], [`OperatorError::Parse`].
    pub fn load_node(&self, name: &str) -> Result<Option<NodeProfile>, OperatorError> {
        let path = self.node_path(name)?;
        let Some(bytes) = read_if_exists(&path)? else {
            return Ok(None);
        };
        parse(&path, "node profile", &bytes).map(Some)
    }

    /// Every saved node profile (`nodes/*.json` with a valid name), sorted by name;
    /// a file that cannot be loaded is listed with its error so it hides no other.
    ///
    /// # Errors
    /// [`OperatorError::Read`] when `nodes/` exists but cannot be listed.
    #[allow(clippy::type_complexity)]
    pub fn list_nodes(
        &self,
    ) -> Result<Vec<(String, Result<NodeProfile, OperatorError>)>, OperatorError> {
        let dir = self.root.join("nodes");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(OperatorError::Read { path: dir, source }),
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_str()?.strip_suffix(".json")?.to_owned();
                valid_node_name(&name).then_some(name)
            })
            .collect();
        names.sort();
        Ok(names
            .into_iter()
            .filter_map(|name| match self.load_node(&name) {
                Ok(Some(p)) => Some((name, Ok(p))),
                Ok(None) => None, // removed meanwhile
                Err(e) => Some((name, Err(e))),
            })
            .collect())
    }

    /// Writes a node profile atomically with mode 0600 (it may hold the node token).
    ///
    /// # Errors
    /// [`OperatorError::NodeName`], [`OperatorError::Write`].
    pub fn save_node(&self, profile: &NodeProfile) -> Result<PathBuf, OperatorError> {
        let path = self.node_path(&profile.name)?;
        let bytes = Zeroizing::new(to_pretty(profile));
        write_private_atomic(&path, &bytes).map_err(|source| OperatorError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// `<root>/auth/<name>.json`: who may call saved node `name` ([`NodeAuth`]). It
    /// lives beside `nodes/<name>.json` because the other SDKs' profile loaders reject
    /// members they do not know.
    ///
    /// # Errors
    /// [`OperatorError::NodeName`] for an invalid node name.
    pub fn node_auth_path(&self, name: &str) -> Result<PathBuf, OperatorError> {
        self.node_path(name)?; // validates the name
        Ok(self.root.join("auth").join(format!("{name}.json")))
    }

    /// The saved auth settings of node `name`; `None` when there are none (open).
    ///
    /// # Errors
    /// [`OperatorError::NodeName`], [`OperatorError::InsecurePermissions`] when the file
    /// is group- or world-readable (Unix), [`OperatorError::Read`],
    /// [`OperatorError::Parse`] (also for an unknown mode).
    pub fn load_node_auth(&self, name: &str) -> Result<Option<NodeAuth>, OperatorError> {
        let path = self.node_auth_path(name)?;
        let Some(bytes) = read_if_exists(&path)? else {
            return Ok(None);
        };
        check_private(&path)?;
        let file: NodeAuthFile = parse(&path, "node auth", &bytes)?;
        let mode = file.auth.parse().map_err(|_| OperatorError::Parse {
            path: path.clone(),
            what: "node auth",
            line: 0,
            column: 0,
        })?;
        Ok(Some(NodeAuth {
            mode,
            api_token: file.api_token.filter(|t| !t.is_empty()),
        }))
    }

    /// Writes the auth settings of node `name` atomically with mode 0600 (they may hold
    /// the access token).
    ///
    /// # Errors
    /// [`OperatorError::NodeName`], [`OperatorError::Write`].
    pub fn save_node_auth(&self, name: &str, auth: &NodeAuth) -> Result<PathBuf, OperatorError> {
        let path = self.node_auth_path(name)?;
        let file = NodeAuthFile {
            auth: auth.mode.as_str().to_owned(),
            api_token: auth.api_token.clone(),
        };
        let bytes = Zeroizing::new(to_pretty(&file));
        write_private_atomic(&path, &bytes).map_err(|source| OperatorError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// The persisted IICP-CX key of `node_id`, if any.
    ///
    /// # Errors
    /// [`OperatorError::InsecurePermissions`], [`OperatorError::Read`],
    /// [`OperatorError::Parse`] (also for a malformed key).
    pub fn load_cx_key(&self, node_id: &str) -> Result<Option<CxKeyPair>, OperatorError> {
        let path = self.cx_key_path(node_id);
        let Some(bytes) = read_if_exists(&path)? else {
            return Ok(None);
        };
        check_private(&path)?;
        let file: CxKeyFile = parse(&path, "cx key", &bytes)?;
        let raw = Zeroizing::new(hex::decode(file.secret.expose()).unwrap_or_default());
        let secret: Zeroizing<[u8; 32]> = match <[u8; 32]>::try_from(raw.as_slice()) {
            Ok(s) => Zeroizing::new(s),
            Err(_) => {
                return Err(OperatorError::Parse {
                    path,
                    what: "cx key",
                    line: 0,
                    column: 0,
                })
            }
        };
        Ok(Some(CxKeyPair::from_secret_bytes(&secret)))
    }

    /// Persists the IICP-CX key of `node_id` (mode 0600).
    ///
    /// # Errors
    /// [`OperatorError::Write`].
    pub fn save_cx_key(&self, node_id: &str, key: &CxKeyPair) -> Result<PathBuf, OperatorError> {
        let path = self.cx_key_path(node_id);
        let file = CxKeyFile {
            node_id: node_id.to_owned(),
            key_id: key.key_id().to_owned(),
            secret: Secret::new(hex::encode(key.secret_bytes().as_ref())),
        };
        let bytes = Zeroizing::new(to_pretty(&file));
        write_private_atomic(&path, &bytes).map_err(|source| OperatorError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }
}

impl Home {
    /// The identity a node registers as: `None` without an operator file or with a
    /// keyless (legacy `op-…`) one, so the node registers anonymously; else the key,
    /// unsealed with `passphrase` when it is encrypted.
    ///
    /// # Errors
    /// As [`Home::load_operator`] and [`OperatorFile::unlock`]
    /// ([`OperatorError::PassphraseRequired`] for a sealed key without a passphrase).
    pub fn operator_identity(
        &self,
        passphrase: Option<&str>,
    ) -> Result<Option<OperatorIdentity>, OperatorError> {
        match self.load_operator()? {
            Some(file) if file.is_key_backed() => file.unlock(passphrase).map(Some),
            _ => Ok(None),
        }
    }

    /// The IICP-CX key of `node_id`, persisted: the saved one, else a fresh key, saved
    /// (mode 0600) so the node keeps its key across restarts.
    ///
    /// # Errors
    /// As [`Home::load_cx_key`] and [`Home::save_cx_key`].
    pub fn cx_key(&self, node_id: &str) -> Result<CxKeyPair, OperatorError> {
        if let Some(key) = self.load_cx_key(node_id)? {
            return Ok(key);
        }
        let key = CxKeyPair::generate(&mut rand_core::OsRng);
        self.save_cx_key(node_id, &key)?;
        Ok(key)
    }
}

#[derive(Serialize, Deserialize)]
struct CxKeyFile {
    node_id: String,
    key_id: String,
    secret: Secret,
}

/// Who may call a saved node (`auth/<name>.json`, mode 0600): the auth mode and, for
/// [`AuthMode::Token`] (and as the fallback of [`AuthMode::Consumer`]), the access
/// token callers present. Not the directory-issued [`NodeProfile::node_token`].
#[derive(Clone, PartialEq, Eq)]
pub struct NodeAuth {
    /// The auth mode.
    pub mode: AuthMode,
    /// The access token (never printed).
    pub api_token: Option<Secret>,
}

impl std::fmt::Debug for NodeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAuth")
            .field("mode", &self.mode)
            .field("has_token", &self.api_token.is_some())
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct NodeAuthFile {
    auth: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api_token: Option<Secret>,
}

/// A saved node profile, `nodes/<name>.json`, with exactly the members the Python and
/// TypeScript SDKs write (their loaders reject unknown ones); unknown members read from
/// another SDK's file are kept.
#[derive(Clone, Serialize, Deserialize)]
pub struct NodeProfile {
    /// The node id (UUID).
    pub node_id: String,
    /// The operator that created it.
    #[serde(default, deserialize_with = "nullable_string")]
    pub operator_id: String,
    /// Profile name (`^[a-z0-9][a-z0-9._-]{0,62}$`).
    pub name: String,
    /// Model server URL.
    #[serde(default, deserialize_with = "nullable_string")]
    pub backend_url: String,
    /// Model.
    #[serde(default, deserialize_with = "nullable_string")]
    pub model: String,
    /// Intent URN.
    #[serde(default, deserialize_with = "nullable_string")]
    pub intent: String,
    /// Region (`unknown` when unset).
    #[serde(default, deserialize_with = "nullable_string")]
    pub region: String,
    /// Directory base URL.
    #[serde(default, deserialize_with = "nullable_string")]
    pub directory_url: String,
    /// Concurrent tasks.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: u32,
    /// Port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Bind host.
    #[serde(default, deserialize_with = "nullable_string")]
    pub host: String,
    /// Public endpoint (empty: none).
    #[serde(default, deserialize_with = "nullable_string")]
    pub public_endpoint: String,
    /// NAT detection at startup.
    #[serde(default)]
    pub auto_detect_nat: bool,
    /// External IPv4 probe URL.
    #[serde(default, deserialize_with = "nullable_string")]
    pub external_ip_probe_url: String,
    /// Receipt profiles offered.
    #[serde(default)]
    pub supported_receipt_profiles: Vec<String>,
    /// The node token of the last registration (never printed).
    #[serde(default)]
    pub node_token: Option<Secret>,
    /// The node HMAC key of the last registration (never printed).
    #[serde(default)]
    pub node_hmac_key: Option<Secret>,
    /// Creation time.
    #[serde(default, deserialize_with = "nullable_string")]
    pub created_at: String,
    /// The node's policy manifest (PROTOCOL.md §17.4), sent at every registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_manifest: Option<Map<String, Value>>,
    /// Members this crate does not know, kept as they are.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn default_max_concurrent() -> u32 {
    4
}

fn default_port() -> u16 {
    DEFAULT_PROFILE_PORT
}

impl std::fmt::Debug for NodeProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeProfile")
            .field("name", &self.name)
            .field("node_id", &self.node_id)
            .field("backend_url", &self.backend_url)
            .field("model", &self.model)
            .field("directory_url", &self.directory_url)
            .field("port", &self.port)
            .field("has_token", &self.node_token.is_some())
            .finish_non_exhaustive()
    }
}

impl NodeProfile {
    /// A profile with the `init` defaults and a fresh node id.
    pub fn new(name: impl Into<String>, operator_id: impl Into<String>, now_unix: u64) -> Self {
        Self {
            node_id: iicp_proto::ids::uuid_v4(&mut rand_core::OsRng).to_string(),
            operator_id: operator_id.into(),
            name: name.into(),
            backend_url: "http://localhost:11434".to_owned(),
            model: String::new(),
            intent: "urn:iicp:intent:llm:chat:v1".to_owned(),
            region: "unknown".to_owned(),
            directory_url: "https://iicp.network/api".to_owned(),
            max_concurrent: 4,
            port: DEFAULT_PROFILE_PORT,
            host: "0.0.0.0".to_owned(),
            public_endpoint: String::new(),
            auto_detect_nat: false,
            external_ip_probe_url: String::new(),
            supported_receipt_profiles: Vec::new(),
            node_token: None,
            node_hmac_key: None,
            created_at: crate::clock::iso8601(now_unix),
            policy_manifest: None,
            extra: Map::new(),
        }
    }
}

/// A file-name stem for `node_id`: itself when it is 1-64 characters of
/// `[A-Za-z0-9._-]` not starting with `.`, else its hex encoding.
pub(crate) fn node_file_stem(node_id: &str) -> String {
    let safe = !node_id.is_empty()
        && node_id.len() <= 64
        && !node_id.starts_with('.')
        && node_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if safe {
        node_id.to_owned()
    } else {
        hex::encode(node_id.as_bytes())
    }
}

/// Whether `name` is a valid node profile name.
pub(crate) fn valid_node_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
}

fn to_pretty<T: Serialize>(value: &T) -> Vec<u8> {
    // serialising these plain structs cannot fail
    let mut out = serde_json::to_vec_pretty(value).unwrap_or_default();
    out.push(b'\n');
    out
}

fn read_if_exists(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, OperatorError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(Zeroizing::new(b))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(OperatorError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &'static str,
    bytes: &[u8],
) -> Result<T, OperatorError> {
    serde_json::from_slice(bytes).map_err(|e| OperatorError::Parse {
        path: path.to_owned(),
        what,
        line: e.line(),
        column: e.column(),
    })
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), OperatorError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = fs::metadata(path).map_err(|source| OperatorError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(OperatorError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), OperatorError> {
    Ok(())
}

/// Writes `bytes` to `path` atomically with mode 0600: a temporary file in the same
/// directory (created 0600, written, fsynced), renamed over `path`, then the directory
/// fsynced. Creates the parent directory (0700) when missing. On failure `path` is
/// untouched and the temporary file removed.
///
/// # Errors
/// Any I/O error.
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        create_private_dir(dir)?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned());
    let mut rnd = [0u8; 6];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut rnd);
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        hex::encode(rnd)
    ));
    let result = (|| {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        #[cfg(unix)]
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    {
        fs::create_dir_all(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_roots() {
        let home = Some(PathBuf::from("/h"));
        assert_eq!(
            Home::resolve(None, home.clone()).expect("ok").root(),
            Path::new("/h/.iicp")
        );
        assert_eq!(
            Home::resolve(Some("~/x"), home.clone()).expect("ok").root(),
            Path::new("/h/x")
        );
        assert_eq!(
            Home::resolve(Some("/abs"), None).expect("ok").root(),
            Path::new("/abs")
        );
        assert!(Home::resolve(None, None).is_err());
    }

    #[test]
    fn node_auth_round_trip() {
        let root = std::env::temp_dir().join(format!(
            "iicp-node-auth-{}-{}",
            std::process::id(),
            hex::encode(rand_core::RngCore::next_u64(&mut rand_core::OsRng).to_le_bytes())
        ));
        let h = Home::new(&root);
        assert_eq!(h.load_node_auth("n1").expect("load"), None);
        let auth = NodeAuth {
            mode: AuthMode::Token,
            api_token: Some(Secret::new("s3cret-token-value-0123")),
        };
        let path = h.save_node_auth("n1", &auth).expect("save");
        assert_eq!(path, root.join("auth").join("n1.json"));
        assert_eq!(h.load_node_auth("n1").expect("load"), Some(auth.clone()));
        assert!(!format!("{auth:?}").contains("s3cret"));
        assert!(h.node_auth_path("../x").is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
            assert!(matches!(
                h.load_node_auth("n1"),
                Err(OperatorError::InsecurePermissions { .. })
            ));
        }
        write_private_atomic(&path, b"{\"auth\": \"tokn\"}\n").expect("write");
        assert!(matches!(
            h.load_node_auth("n1"),
            Err(OperatorError::Parse { .. })
        ));
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn node_names() {
        for ok in ["default", "a", "node-1.eu_2", &"a".repeat(63)] {
            assert!(valid_node_name(ok), "{ok}");
        }
        for bad in ["", "Default", "-a", ".a", "a/b", "../x", &"a".repeat(64)] {
            assert!(!valid_node_name(bad), "{bad}");
        }
        let h = Home::new("/r");
        assert!(h.node_path("../etc").is_err());
        assert_eq!(h.cx_key_path("abc-1"), Path::new("/r/cx/abc-1.json"));
        assert_eq!(h.cx_key_path("../x"), Path::new("/r/cx/2e2e2f78.json"));
    }
}
