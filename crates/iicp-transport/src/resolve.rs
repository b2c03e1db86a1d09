//! Name resolution with an address rule checked at connect time.
//!
//! A client that must not reach private networks (the consumer SDK's endpoint policy,
//! PROTOCOL.md §9.3) cannot check a host name once and let the connector resolve it
//! again: the second answer may differ (DNS rebinding). An [`AddressRule`] given to
//! [`HttpClientConfig`](crate::http::client::HttpClientConfig) or
//! [`NativeClientConfig`](crate::native::NativeClientConfig) is applied to every answer
//! the connector itself uses, so the addresses checked are the addresses dialled. IP
//! literals are checked the same way.
//!
//! The rule sees the whole answer: a rule that refuses any private address refuses an
//! answer that mixes public and private ones, instead of letting the connector pick.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

/// The predicate of an [`AddressRule`].
type Admits = dyn Fn(&[IpAddr]) -> bool + Send + Sync;

/// Which resolved addresses a client may connect to. Cheap to clone.
#[derive(Clone)]
pub struct AddressRule {
    admits: Arc<Admits>,
}

impl AddressRule {
    /// A rule that admits a host's answer when `admits(addresses)` is true.
    pub fn new(admits: impl Fn(&[IpAddr]) -> bool + Send + Sync + 'static) -> Self {
        Self {
            admits: Arc::new(admits),
        }
    }

    /// Whether the rule admits the answer `addrs`.
    pub fn admits(&self, addrs: &[IpAddr]) -> bool {
        (self.admits)(addrs)
    }
}

impl fmt::Debug for AddressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AddressRule")
    }
}

/// Why a host could not be turned into addresses to connect to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The lookup failed.
    #[error("{host} did not resolve")]
    Lookup {
        /// The host name.
        host: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// The lookup returned no address.
    #[error("{host} resolved to no address")]
    Empty {
        /// The host name.
        host: String,
    },
    /// The [`AddressRule`] refused the answer.
    #[error("the addresses of {host} are refused by the address rule")]
    Refused {
        /// The host name.
        host: String,
    },
}

impl ResolveError {
    /// Whether the address rule refused the answer (as opposed to a failed lookup).
    pub fn is_refused(&self) -> bool {
        matches!(self, Self::Refused { .. })
    }

    /// Finds a refusal in an error's source chain (how a refusal surfaces through
    /// hyper's connector).
    pub fn refused_in(err: &(dyn std::error::Error + 'static)) -> bool {
        let mut current = Some(err);
        while let Some(e) = current {
            if e.downcast_ref::<ResolveError>()
                .is_some_and(Self::is_refused)
            {
                return true;
            }
            current = e.source();
        }
        false
    }
}

/// The address of an IP-literal host (IPv6 with or without brackets), `None` for a name.
pub(crate) fn literal(host: &str) -> Option<IpAddr> {
    iicp_proto::endpoint::ip_literal(host)
}

/// The addresses of `host` (a name, or an IP literal with or without brackets) at
/// `port`, checked against `rule`.
pub async fn resolve(
    host: &str,
    port: u16,
    rule: Option<&AddressRule>,
) -> Result<Vec<SocketAddr>, ResolveError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match literal(bare) {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => tokio::net::lookup_host((bare, port))
            .await
            .map_err(|source| ResolveError::Lookup {
                host: bare.to_owned(),
                source,
            })?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(ResolveError::Empty {
            host: bare.to_owned(),
        });
    }
    if let Some(rule) = rule {
        let ips: Vec<IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
        if !rule.admits(&ips) {
            return Err(ResolveError::Refused {
                host: bare.to_owned(),
            });
        }
    }
    Ok(addrs)
}

/// hyper-util's resolver for [`HttpClient`](crate::http::client::HttpClient): [`resolve`]
/// with the client's rule. (hyper-util dials IP-literal URLs without a resolver; the
/// HTTP client checks those itself before sending.)
#[derive(Clone, Debug, Default)]
pub(crate) struct RuleResolver {
    pub(crate) rule: Option<AddressRule>,
}

type ResolveFuture =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, ResolveError>> + Send>>;

impl tower_service::Service<Name> for RuleResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = ResolveError;
    type Future = ResolveFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let rule = self.rule.clone();
        Box::pin(async move {
            // port 0: hyper-util puts the URL's port in
            resolve(name.as_str(), 0, rule.as_ref())
                .await
                .map(Vec::into_iter)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback_refused() -> AddressRule {
        AddressRule::new(|addrs| addrs.iter().all(|a| !a.is_loopback()))
    }

    #[tokio::test]
    async fn literals_are_checked_without_a_lookup() {
        let rule = loopback_refused();
        let err = resolve("127.0.0.1", 80, Some(&rule)).await.unwrap_err();
        assert!(err.is_refused(), "{err}");
        let err = resolve("[::1]", 80, Some(&rule)).await.unwrap_err();
        assert!(err.is_refused(), "{err}");
        let ok = resolve("192.0.2.7", 8080, Some(&rule)).await.unwrap();
        assert_eq!(ok, vec!["192.0.2.7:8080".parse().unwrap()]);
        let ok = resolve("127.0.0.1", 80, None).await.unwrap();
        assert_eq!(ok.len(), 1);
    }

    #[tokio::test]
    async fn names_are_checked_on_the_answer_used() {
        // `localhost` resolves from /etc/hosts, to loopback only
        let rule = loopback_refused();
        let err = resolve("localhost", 80, Some(&rule)).await.unwrap_err();
        assert!(err.is_refused(), "{err}");
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(err);
        assert!(ResolveError::refused_in(boxed.as_ref()));
        let addrs = resolve("localhost", 81, None).await.unwrap();
        assert!(addrs.iter().all(|a| a.port() == 81 && a.ip().is_loopback()));
    }

    #[tokio::test]
    async fn the_rule_sees_the_whole_answer() {
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let rule = AddressRule::new(move |addrs| {
            s.lock().extend_from_slice(addrs);
            true
        });
        resolve("localhost", 80, Some(&rule)).await.unwrap();
        let seen = seen.lock();
        assert!(!seen.is_empty());
        assert!(seen.iter().all(IpAddr::is_loopback));
    }

    #[test]
    fn failed_lookups_are_not_refusals() {
        let err = ResolveError::Lookup {
            host: "node.example".into(),
            source: std::io::Error::other("no answer"),
        };
        assert!(!err.is_refused());
        assert!(!ResolveError::refused_in(&err));
    }
}
