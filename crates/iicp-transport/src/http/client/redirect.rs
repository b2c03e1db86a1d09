//! Redirect policy and `Location` resolution (§8.0, §19 T29, DESIGN §4.13).

use http::Uri;

/// Which redirects a request follows.
///
/// Only 307 and 308 are ever followed, keeping the method and the body; 301, 302 and
/// 303 are returned to the caller as they are. Credentials (`Authorization`,
/// `X-IICP-Consumer-Token`, cookies) are dropped from the first hop that leaves the
/// origin on, and a redirect from `https` to `http` is always refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Redirects {
    /// Return every redirect response to the caller (the default).
    #[default]
    None,
    /// Follow 307/308.
    Follow {
        /// Most redirects followed; one more is
        /// [`HttpClientError::TooManyRedirects`](super::HttpClientError::TooManyRedirects).
        max_hops: u8,
        /// Refuse a redirect to another origin (scheme, host, port) than the
        /// request's with
        /// [`HttpClientError::RedirectRefused`](super::HttpClientError::RedirectRefused).
        same_origin_only: bool,
    },
}

impl Redirects {
    /// Follow up to `max_hops` 307/308 redirects to any origin (directory calls, §8.0).
    pub fn follow(max_hops: u8) -> Self {
        Self::Follow {
            max_hops,
            same_origin_only: false,
        }
    }

    /// Follow up to `max_hops` 307/308 redirects within the request's origin
    /// (provider calls).
    pub fn follow_same_origin(max_hops: u8) -> Self {
        Self::Follow {
            max_hops,
            same_origin_only: true,
        }
    }
}

fn default_port(scheme: Option<&str>) -> Option<u16> {
    match scheme {
        Some("http") => Some(80),
        Some("https") => Some(443),
        _ => None,
    }
}

/// Same scheme, host (case-insensitive) and effective port.
pub(super) fn same_origin(a: &Uri, b: &Uri) -> bool {
    let scheme_a = a.scheme_str();
    let scheme_b = b.scheme_str();
    scheme_a == scheme_b
        && match (a.host(), b.host()) {
            (Some(ha), Some(hb)) => ha.eq_ignore_ascii_case(hb),
            _ => false,
        }
        && a.port_u16().or(default_port(scheme_a)) == b.port_u16().or(default_port(scheme_b))
}

/// Resolves a `Location` value against the URL that answered (RFC 9110 §10.2.2:
/// absolute, scheme-relative, absolute-path or relative reference). The fragment is
/// dropped; dot segments are not normalised.
pub(super) fn resolve(base: &Uri, location: &str) -> Option<Uri> {
    let location = location.trim();
    let location = location.split('#').next().unwrap_or_default();
    if location.is_empty() {
        return None;
    }
    let scheme = base.scheme_str()?;
    let authority = base.authority()?.as_str();
    let text = if location.contains("://") && !location.starts_with('/') {
        location.to_owned()
    } else if let Some(rest) = location.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else if location.starts_with('?') {
        format!("{scheme}://{authority}{}{location}", base.path())
    } else {
        let path = base.path();
        let dir = path.rsplit_once('/').map_or("", |(dir, _)| dir);
        format!("{scheme}://{authority}{dir}/{location}")
    };
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[test]
    fn resolves_locations() {
        let base = u("https://d.example:8443/api/v1/register?x=1");
        assert_eq!(
            resolve(&base, "https://o.example/a").unwrap(),
            u("https://o.example/a")
        );
        assert_eq!(
            resolve(&base, "//o.example/b").unwrap(),
            u("https://o.example/b")
        );
        assert_eq!(
            resolve(&base, "/v1/x?y=2").unwrap(),
            u("https://d.example:8443/v1/x?y=2")
        );
        assert_eq!(
            resolve(&base, "heartbeat").unwrap(),
            u("https://d.example:8443/api/v1/heartbeat")
        );
        assert_eq!(
            resolve(&base, "?z=3").unwrap(),
            u("https://d.example:8443/api/v1/register?z=3")
        );
        assert!(resolve(&base, "").is_none());
    }

    #[test]
    fn origins() {
        assert!(same_origin(&u("http://a:80/x"), &u("http://A/y")));
        assert!(!same_origin(&u("http://a/x"), &u("https://a/x")));
        assert!(!same_origin(&u("http://a:1/x"), &u("http://a:2/x")));
    }
}
