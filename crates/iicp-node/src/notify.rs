//! The service manager's notify protocol (systemd `sd_notify(3)`), spoken directly: one
//! datagram of newline-separated `KEY=VALUE` assignments per message, sent to the Unix
//! datagram socket named by `NOTIFY_SOCKET` — a path, or with a leading `@` a socket in
//! the Linux abstract namespace. `serve` sends `READY=1` once it serves, `STATUS=…`
//! when what it shows changes, `WATCHDOG=1` at half the watchdog interval and
//! `STOPPING=1` on shutdown.
//!
//! The library reads no environment: the caller passes the values of `NOTIFY_SOCKET`,
//! `WATCHDOG_USEC` and `WATCHDOG_PID` to [`Notifier::new`]. Sending never blocks
//! (a full socket buffer drops the message, as `sd_notify` does) and never fails the
//! node: errors are returned for the caller to log.

use std::ffi::OsStr;
use std::time::Duration;

/// Why the notify socket cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// `NOTIFY_SOCKET` is neither an absolute path nor an `@abstract` name.
    #[error("NOTIFY_SOCKET must be an absolute path or start with @, got {0:?}")]
    Address(String),
    /// Abstract socket names exist on Linux only.
    #[error("NOTIFY_SOCKET names an abstract socket, which this platform does not have")]
    AbstractUnsupported,
    /// `WATCHDOG_USEC` is not a positive integer.
    #[error("WATCHDOG_USEC must be a positive number of microseconds, got {0:?}")]
    WatchdogUsec(String),
    /// The socket could not be created or the message not sent.
    #[error("notify socket: {0}")]
    Io(#[from] std::io::Error),
}

/// A connection to the service manager's notify socket.
#[derive(Debug)]
pub struct Notifier {
    #[cfg(unix)]
    socket: std::os::unix::net::UnixDatagram,
    #[cfg(unix)]
    addr: std::os::unix::net::SocketAddr,
    watchdog: Option<Duration>,
}

/// The watchdog ping interval: half of `WATCHDOG_USEC`, when the watchdog is meant for
/// process `pid` (`WATCHDOG_PID` absent, or equal to it); `None` otherwise.
///
/// # Errors
/// [`NotifyError::WatchdogUsec`] for a value that is not a positive integer.
pub fn watchdog_interval(
    watchdog_usec: Option<&str>,
    watchdog_pid: Option<&str>,
    pid: u32,
) -> Result<Option<Duration>, NotifyError> {
    let Some(usec) = watchdog_usec.map(str::trim).filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let n: u64 = usec
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| NotifyError::WatchdogUsec(usec.chars().take(32).collect()))?;
    let ours = watchdog_pid
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .is_none_or(|p| p.parse::<u32>().ok() == Some(pid));
    Ok(ours.then(|| Duration::from_micros(n / 2).max(Duration::from_millis(1))))
}

impl Notifier {
    /// The notifier for `notify_socket` (the value of `NOTIFY_SOCKET`; `None` or empty:
    /// no service manager listens, and `Ok(None)` is returned), with the watchdog of
    /// [`watchdog_interval`].
    ///
    /// # Errors
    /// [`NotifyError`] for a malformed address or watchdog value, or when the socket
    /// cannot be created.
    pub fn new(
        notify_socket: Option<&OsStr>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        pid: u32,
    ) -> Result<Option<Self>, NotifyError> {
        let Some(path) = notify_socket.filter(|p| !p.is_empty()) else {
            return Ok(None);
        };
        let watchdog = watchdog_interval(watchdog_usec, watchdog_pid, pid)?;
        Self::open(path, watchdog).map(Some)
    }

    #[cfg(unix)]
    fn open(path: &OsStr, watchdog: Option<Duration>) -> Result<Self, NotifyError> {
        use std::os::unix::ffi::OsStrExt as _;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let bytes = path.as_bytes();
        let addr = match bytes.first() {
            Some(b'@') => abstract_addr(&bytes[1..])?,
            Some(b'/') => SocketAddr::from_pathname(path)?,
            _ => return Err(NotifyError::Address(path.to_string_lossy().into_owned())),
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket,
            addr,
            watchdog,
        })
    }

    #[cfg(not(unix))]
    fn open(path: &OsStr, _watchdog: Option<Duration>) -> Result<Self, NotifyError> {
        Err(NotifyError::Address(path.to_string_lossy().into_owned()))
    }

    /// How often to send `WATCHDOG=1` (half the manager's timeout), when it watches.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `message` (newline-separated `KEY=VALUE` assignments) as one datagram.
    ///
    /// # Errors
    /// [`NotifyError::Io`] when the datagram cannot be sent.
    pub fn send(&self, message: &str) -> Result<(), NotifyError> {
        #[cfg(unix)]
        {
            self.socket.send_to_addr(message.as_bytes(), &self.addr)?;
            Ok(())
        }
        #[cfg(not(unix))]
        {
            let _ = message;
            Ok(())
        }
    }

    /// `READY=1` with a first `STATUS=`.
    ///
    /// # Errors
    /// As [`Notifier::send`].
    pub fn ready(&self, status: &str) -> Result<(), NotifyError> {
        self.send(&format!("READY=1\nSTATUS={}", status_value(status)))
    }

    /// `STATUS=<status>` (one line: line breaks become spaces).
    ///
    /// # Errors
    /// As [`Notifier::send`].
    pub fn status(&self, status: &str) -> Result<(), NotifyError> {
        self.send(&format!("STATUS={}", status_value(status)))
    }

    /// `WATCHDOG=1`.
    ///
    /// # Errors
    /// As [`Notifier::send`].
    pub fn ping(&self) -> Result<(), NotifyError> {
        self.send("WATCHDOG=1")
    }

    /// `STOPPING=1` with a last `STATUS=`.
    ///
    /// # Errors
    /// As [`Notifier::send`].
    pub fn stopping(&self, status: &str) -> Result<(), NotifyError> {
        self.send(&format!("STOPPING=1\nSTATUS={}", status_value(status)))
    }
}

#[cfg(target_os = "linux")]
fn abstract_addr(name: &[u8]) -> Result<std::os::unix::net::SocketAddr, NotifyError> {
    use std::os::linux::net::SocketAddrExt as _;
    Ok(std::os::unix::net::SocketAddr::from_abstract_name(name)?)
}

#[cfg(all(unix, not(target_os = "linux")))]
fn abstract_addr(_name: &[u8]) -> Result<std::os::unix::net::SocketAddr, NotifyError> {
    Err(NotifyError::AbstractUnsupported)
}

/// A `STATUS=` value: one line, at most 512 bytes (cut at a character boundary).
fn status_value(status: &str) -> String {
    let mut s: String = status
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.len() > 512 {
        let mut end = 512;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 1024];
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let n = sock.recv(&mut buf).expect("recv");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn watchdog_is_half_the_timeout_and_only_for_our_pid() {
        let ms = Duration::from_millis;
        assert_eq!(watchdog_interval(None, None, 7).expect("ok"), None);
        assert_eq!(
            watchdog_interval(Some("30000000"), None, 7).expect("ok"),
            Some(ms(15_000))
        );
        assert_eq!(
            watchdog_interval(Some("400000"), Some("7"), 7).expect("ok"),
            Some(ms(200))
        );
        assert_eq!(
            watchdog_interval(Some("400000"), Some("8"), 7).expect("ok"),
            None
        );
        for bad in ["0", "-1", "1.5", "abc"] {
            assert!(watchdog_interval(Some(bad), None, 7).is_err(), "{bad}");
        }
    }

    #[test]
    fn unset_or_empty_socket_is_no_notifier_and_bad_addresses_are_errors() {
        assert!(Notifier::new(None, Some("1000"), None, 1)
            .expect("ok")
            .is_none());
        assert!(Notifier::new(Some(OsStr::new("")), None, None, 1)
            .expect("ok")
            .is_none());
        assert!(matches!(
            Notifier::new(Some(OsStr::new("relative/sock")), None, None, 1),
            Err(NotifyError::Address(_))
        ));
    }

    #[test]
    fn messages_reach_a_path_socket() {
        let dir = std::env::temp_dir().join(format!(
            "iicp-notify-{}-{}",
            std::process::id(),
            rand_core::RngCore::next_u32(&mut rand_core::OsRng)
        ));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("notify.sock");
        let listener = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::new(Some(path.as_os_str()), Some("2000000"), None, 1)
            .expect("ok")
            .expect("some");
        assert_eq!(n.watchdog(), Some(Duration::from_secs(1)));
        n.ready("serving\non port 1").expect("send");
        assert_eq!(recv(&listener), "READY=1\nSTATUS=serving on port 1");
        n.ping().expect("send");
        assert_eq!(recv(&listener), "WATCHDOG=1");
        n.stopping("bye").expect("send");
        assert_eq!(recv(&listener), "STOPPING=1\nSTATUS=bye");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn messages_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!(
            "iicp-notify-test-{}-{}",
            std::process::id(),
            rand_core::RngCore::next_u32(&mut rand_core::OsRng)
        );
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let listener = UnixDatagram::bind_addr(&addr).expect("bind");
        let at = format!("@{name}");
        let n = Notifier::new(Some(OsStr::new(&at)), None, None, 1)
            .expect("ok")
            .expect("some");
        assert_eq!(n.watchdog(), None);
        n.status("x".repeat(600).as_str()).expect("send");
        let got = recv(&listener);
        assert_eq!(got.len(), "STATUS=".len() + 512);
    }
}
