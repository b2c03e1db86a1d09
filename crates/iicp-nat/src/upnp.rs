//! UPnP IGD client (PROTOCOL.md §13.1 rung 2, §13.2; SEED-SDK.md §3.1 step 4, §3.3):
//! SSDP discovery ([`ssdp`]), the device description, and the SOAP actions the planner's
//! steps need — WANIPConnection / WANPPPConnection `GetExternalIPAddress`,
//! `AddPortMapping`, `DeletePortMapping`, `GetSpecificPortMappingEntry`, and
//! WANIPv6FirewallControl `AddPinhole`, `UpdatePinhole`, `DeletePinhole`.
//!
//! `rupnp` sends the IPv4 SSDP search ([`ssdp::search_v4_group`]). Descriptions and SOAP
//! exchanges go over [`iicp_transport::http::HttpClient`] and are parsed with `roxmltree`:
//! `rupnp`'s own description and action calls cannot do what the planner needs — its
//! actions report a SOAP fault sent with HTTP 500 (as UPnP sends them) as a bare status,
//! losing 714/718/725/606; it reads answers without a size cap; it keeps control URLs
//! private and cannot bind the source address pinhole calls must leave from
//! (docs/adr/0011-rupnp-for-upnp.md). Every exchange has a timeout and a response size
//! cap; nothing here retries (the planner decides).
//!
//! IPv6 pinholes: IGD2 gateways authorise `AddPinhole` (and the later `UpdatePinhole` and
//! `DeletePinhole`) by the caller's address — miniupnpd answers 606 "Action not
//! authorized" to a request for `[2001:…]` that arrives from an IPv4 address. Discovery
//! therefore also searches `[ff02::c]:1900` on the interfaces that have a global IPv6
//! address, pairs the gateway's IPv6 description with its IPv4 one by the root device's
//! `UDN`, and the pinhole actions go to the IPv6 control URL from the very address the pinhole
//! opens (the source address is bound). Without an IPv6 answer they fall back to the
//! IPv4 control URL, and the gateway decides.
//!
//! The [`Gateway`] trait is the seam the [`crate::Executor`] drives; [`Igd`] is the real
//! implementation, tests substitute fakes.

pub mod ssdp;
mod xml;

use parking_lot::{Mutex, MutexGuard};
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use iicp_transport::http::{HttpClient, HttpClientConfig, HttpClientError};

use crate::plan::UpnpFailure;

/// A boxed, sendable future (the [`Gateway`] trait is object safe).
pub use futures_util::future::BoxFuture;

/// Service type of the IPv6 firewall control service.
pub const WAN_IPV6_FIREWALL_CONTROL: &str = "urn:schemas-upnp-org:service:WANIPv6FirewallControl:1";

/// WAN connection services, in preference order.
pub const WAN_CONNECTION_SERVICES: [&str; 3] = [
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
];

/// Largest description or SOAP answer read.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// Errors of UPnP exchanges.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpnpError {
    /// The SSDP socket failed.
    #[error("SSDP search failed")]
    Ssdp(#[source] std::io::Error),
    /// The HTTP exchange with the gateway failed (connect, timeout, size).
    #[error("HTTP exchange with the gateway failed")]
    Http(#[source] HttpClientError),
    /// The gateway answered with a SOAP fault.
    #[error("gateway answered {action} with UPnP error {code}")]
    Fault {
        /// The action.
        action: &'static str,
        /// UPnP `errorCode`.
        code: u16,
        /// `errorDescription` (from the gateway, not from us).
        description: String,
    },
    /// The gateway answered with an HTTP error that is not a SOAP fault.
    #[error("gateway answered {action} with HTTP {status}")]
    Status {
        /// The action (or `description` for the device description).
        action: &'static str,
        /// HTTP status.
        status: u16,
    },
    /// The device description has no WAN connection service.
    #[error("the gateway offers no WANIPConnection or WANPPPConnection service")]
    NoWanService,
    /// The device description has no WANIPv6FirewallControl service.
    #[error("the gateway offers no WANIPv6FirewallControl service")]
    NoPinholeService,
    /// An answer lacked a required element or had a bad value.
    #[error("malformed gateway answer: {0}")]
    Malformed(&'static str),
    /// An answer (description or SOAP) is not well-formed XML, or too large a tree.
    #[error("gateway answer is not usable XML")]
    Xml(#[source] roxmltree::Error),
}

impl UpnpError {
    /// The UPnP error code of a SOAP fault.
    pub fn code(&self) -> Option<u16> {
        match self {
            UpnpError::Fault { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the exchange timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, UpnpError::Http(e) if e.is_timeout())
    }

    /// The failure as the planner records it.
    pub fn failure(&self) -> UpnpFailure {
        UpnpFailure { code: self.code() }
    }
}

/// Transport protocol of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }

    fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

/// An `AddPortMapping` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMapping {
    /// Port on the gateway's WAN side.
    pub external_port: u16,
    /// Port on our host.
    pub internal_port: u16,
    /// Our LAN address.
    pub internal_client: IpAddr,
    /// Protocol.
    pub protocol: Protocol,
    /// Lease; zero asks for a permanent mapping.
    pub lease: Duration,
    /// `NewPortMappingDescription`.
    pub description: String,
}

/// A `GetSpecificPortMappingEntry` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappingEntry {
    /// Internal port.
    pub internal_port: u16,
    /// Internal client.
    pub internal_client: String,
    /// Whether enabled.
    pub enabled: bool,
    /// Remaining lease in seconds (0 = permanent).
    pub lease_remaining: u64,
}

/// An `AddPinhole` request (WANIPv6FirewallControl:1; SEED-SDK.md §3.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinholeRequest {
    /// Our global IPv6 address.
    pub internal_client: IpAddr,
    /// Our port.
    pub internal_port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Lease.
    pub lease: Duration,
}

/// A UPnP Internet Gateway Device as the executor drives it.
pub trait Gateway: Send + Sync + fmt::Debug {
    /// Our address on the gateway's network (the `NewInternalClient` to use).
    fn local_ip(&self) -> Option<IpAddr>;
    /// Whether WANIPv6FirewallControl is offered.
    fn has_pinhole_service(&self) -> bool;
    /// `GetExternalIPAddress`; `None` for an empty or `0.0.0.0` answer.
    fn external_ip(&self) -> BoxFuture<'_, Result<Option<IpAddr>, UpnpError>>;
    /// `AddPortMapping` (also used to renew).
    fn add_port_mapping<'a>(&'a self, m: &'a PortMapping) -> BoxFuture<'a, Result<(), UpnpError>>;
    /// `DeletePortMapping`.
    fn delete_port_mapping(
        &self,
        external_port: u16,
        protocol: Protocol,
    ) -> BoxFuture<'_, Result<(), UpnpError>>;
    /// `GetSpecificPortMappingEntry`; `None` when there is no such mapping.
    fn mapping_entry(
        &self,
        external_port: u16,
        protocol: Protocol,
    ) -> BoxFuture<'_, Result<Option<MappingEntry>, UpnpError>>;
    /// `AddPinhole`; returns the `UniqueID`.
    fn add_pinhole<'a>(&'a self, p: &'a PinholeRequest) -> BoxFuture<'a, Result<u32, UpnpError>>;
    /// `UpdatePinhole`.
    fn update_pinhole(&self, id: u32, lease: Duration) -> BoxFuture<'_, Result<(), UpnpError>>;
    /// `DeletePinhole`.
    fn delete_pinhole(&self, id: u32) -> BoxFuture<'_, Result<(), UpnpError>>;
}

/// Finds a gateway (the seam for fakes).
pub trait Discover: Send + Sync {
    /// Searches; `Ok(None)` when nothing answered.
    fn discover(&self) -> BoxFuture<'_, Result<Option<Arc<dyn Gateway>>, UpnpError>>;
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Service {
    service_type: String,
    control_url: String,
}

/// A real IGD reached over HTTP/SOAP.
#[derive(Clone)]
pub struct Igd {
    http: HttpClient,
    timeout: Duration,
    location: String,
    /// The root device's `UDN`.
    udn: Option<String>,
    wan: Service,
    /// WANIPv6FirewallControl as the description at `location` names it.
    v6fc: Option<Service>,
    /// The same service at the gateway's IPv6 control URL, when it answered there.
    v6fc_over_ipv6: Option<Service>,
    local_ip: Option<IpAddr>,
    /// Pinhole `UniqueID` → the address it was opened for, whose later `UpdatePinhole`
    /// and `DeletePinhole` must come from it too (one entry per served port).
    pinhole_owners: Arc<Mutex<HashMap<u32, IpAddr>>>,
}

impl fmt::Debug for Igd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Igd")
            .field("location", &self.location)
            .field("wan", &self.wan.service_type)
            .field("pinholes", &self.v6fc.is_some())
            .field("pinholes_over_ipv6", &self.v6fc_over_ipv6.is_some())
            .finish_non_exhaustive()
    }
}

/// Settings of [`UpnpDiscovery`].
#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    /// Where the IPv4 M-SEARCH goes (default the SSDP multicast group).
    pub ssdp_target: SocketAddr,
    /// Where the IPv6 M-SEARCH goes: `None` (default) for `[ff02::c]:1900` on every
    /// interface with a global IPv6 address; an empty list turns the IPv6 search off.
    pub ssdp_targets_v6: Option<Vec<SocketAddr>>,
    /// How long SSDP answers are collected.
    pub search_timeout: Duration,
    /// Timeout of each HTTP exchange with the gateway.
    pub http_timeout: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            ssdp_target: SocketAddr::from(([239, 255, 255, 250], 1900)),
            ssdp_targets_v6: None,
            search_timeout: Duration::from_secs(3),
            http_timeout: Duration::from_secs(5),
        }
    }
}

/// SSDP + description discovery of a real IGD.
#[derive(Clone, Debug)]
pub struct UpnpDiscovery {
    http: HttpClient,
    config: DiscoveryConfig,
}

impl UpnpDiscovery {
    /// Discovery with `http` as the client for descriptions and SOAP calls.
    pub fn new(http: HttpClient, config: DiscoveryConfig) -> Self {
        Self { http, config }
    }

    /// SSDP search over IPv4 and IPv6 at once, then the first answering device whose
    /// description has a WAN connection service (IPv4 answers first), with its IPv6
    /// pinhole control URL when the same device (root `UDN`) answered over IPv6.
    ///
    /// # Errors
    /// SSDP socket errors when neither search could run; description errors only when
    /// no device worked.
    pub async fn find(&self) -> Result<Option<Igd>, UpnpError> {
        let timeout = self.config.search_timeout;
        let v6_targets = match &self.config.ssdp_targets_v6 {
            Some(t) => t.clone(),
            None => ssdp::v6_targets(&crate::detect::ipv6_scopes()),
        };
        let v4_target = self.config.ssdp_target;
        let v4_search = async {
            if v4_target == ssdp::SSDP_GROUP_V4 {
                ssdp::search_v4_group(&ssdp::SEARCH_TARGETS, timeout).await
            } else {
                ssdp::search(&[v4_target], &ssdp::SEARCH_TARGETS, timeout).await
            }
        };
        let (v4, v6) = tokio::join!(
            v4_search,
            ssdp::search(&v6_targets, &ssdp::SEARCH_TARGETS, timeout),
        );
        let v6 = v6.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "IPv6 SSDP search failed");
            Vec::new()
        });
        let v4 = match v4 {
            Ok(r) => r,
            Err(e) if v6.is_empty() => return Err(UpnpError::Ssdp(e)),
            Err(e) => {
                tracing::debug!(error = %e, "IPv4 SSDP search failed; using IPv6 answers");
                Vec::new()
            }
        };
        let mut last_err = None;
        for reply in v4.iter().chain(&v6) {
            match Igd::from_location(self.http.clone(), &reply.location, self.config.http_timeout)
                .await
            {
                Ok(mut igd) => {
                    self.pair_ipv6(&mut igd, &v6).await;
                    return Ok(Some(igd));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "SSDP answer without a usable IGD");
                    last_err = Some(e);
                }
            }
        }
        match last_err {
            Some(UpnpError::NoWanService) | None => Ok(None),
            Some(e) => Err(e),
        }
    }

    /// Gives `igd` the IPv6 control URL of its firewall service, from the IPv6 answer
    /// whose description names the same root device (`UDN`; SSDP `USN`s name whichever
    /// sub-device answered, so they cannot pair), or from the only IPv6 answer when the
    /// descriptions carry no `UDN`.
    async fn pair_ipv6(&self, igd: &mut Igd, v6: &[ssdp::Reply]) {
        if igd.v6fc.is_none() || is_ipv6_url(&igd.location) {
            return;
        }
        // `ssdp::search` keeps one answer per location
        let only_one = v6.len() == 1;
        for reply in v6 {
            let desc = match describe(&self.http, &reply.location, self.config.http_timeout).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(error = %e, "IPv6 description unusable");
                    continue;
                }
            };
            let same_device = match (&igd.udn, &desc.udn) {
                (Some(a), Some(b)) => a == b,
                _ => only_one,
            };
            match desc.v6fc {
                Some(v6fc) if same_device && is_ipv6_url(&v6fc.control_url) => {
                    tracing::debug!(control = %v6fc.control_url, "IPv6 pinhole control URL");
                    igd.v6fc_over_ipv6 = Some(v6fc);
                    return;
                }
                _ => {}
            }
        }
    }
}

/// Whether `url`'s host is an IPv6 literal.
fn is_ipv6_url(url: &str) -> bool {
    crate::addr::endpoint_host(url)
        .and_then(|h| h.parse::<IpAddr>().ok())
        .is_some_and(|ip| ip.is_ipv6())
}

/// Fetches and parses the device description at `location`.
async fn describe(
    http: &HttpClient,
    location: &str,
    timeout: Duration,
) -> Result<Description, UpnpError> {
    let reply = http
        .get(location)
        .timeout(timeout)
        .max_response_bytes(MAX_ANSWER_BYTES)
        .send()
        .await
        .map_err(UpnpError::Http)?;
    if !reply.is_success() {
        return Err(UpnpError::Status {
            action: "description",
            status: reply.status.as_u16(),
        });
    }
    parse_description(location, &String::from_utf8_lossy(&reply.body))
}

impl Discover for UpnpDiscovery {
    fn discover(&self) -> BoxFuture<'_, Result<Option<Arc<dyn Gateway>>, UpnpError>> {
        Box::pin(async move {
            Ok(self
                .find()
                .await?
                .map(|igd| Arc::new(igd) as Arc<dyn Gateway>))
        })
    }
}

/// `scheme://host:port` of a URL.
fn origin(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find('/').unwrap_or(rest.len());
    Some(&url[..scheme.len() + 3 + end])
}

fn join(base: &str, path: &str) -> String {
    if path.starts_with("http://") || path.starts_with("https://") {
        return path.to_owned();
    }
    let base = origin(base).unwrap_or(base).trim_end_matches('/');
    if path.starts_with('/') {
        format!("{base}{path}")
    } else {
        format!("{base}/{path}")
    }
}

/// What a device description tells: the root device's `UDN` (its identity, the same
/// whichever address the description was fetched from), the preferred WAN connection
/// service and the IPv6 firewall service, with absolute control URLs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Description {
    udn: Option<String>,
    wan: Service,
    v6fc: Option<Service>,
}

/// Parses a device description ([`Description`]): every `service` element anywhere
/// (root device and embedded devices alike) with its `serviceType` and `controlURL`,
/// control URLs made absolute against `URLBase` or else `location`.
fn parse_description(location: &str, xml_text: &str) -> Result<Description, UpnpError> {
    let doc = xml::Xml::parse(xml_text).map_err(UpnpError::Xml)?;
    let base = doc
        .text("URLBase")
        .filter(|b| b.starts_with("http://"))
        .unwrap_or_else(|| location.to_owned());
    let services: Vec<Service> = xml::elements(doc.root(), "service")
        .filter_map(|s| {
            Some(Service {
                service_type: xml::text_of(xml::first(s, "serviceType")?),
                control_url: join(&base, &xml::text_of(xml::first(s, "controlURL")?)),
            })
        })
        .collect();
    let wan = WAN_CONNECTION_SERVICES
        .iter()
        .find_map(|t| services.iter().find(|s| s.service_type == *t))
        .cloned()
        .ok_or(UpnpError::NoWanService)?;
    let v6fc = services
        .iter()
        .find(|s| s.service_type == WAN_IPV6_FIREWALL_CONTROL)
        .cloned();
    // the first UDN of the document is the root device's
    let udn = doc.text("UDN").filter(|u| !u.is_empty());
    Ok(Description { udn, wan, v6fc })
}

/// The SOAP envelope for `action` of `service_type` with `args` (escaped).
fn envelope(service_type: &str, action: &str, args: &[(&str, String)]) -> String {
    let mut body = String::with_capacity(512);
    body.push_str("<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body>");
    body.push_str(&format!(
        "<u:{action} xmlns:u=\"{}\">",
        xml::escape(service_type)
    ));
    for (name, value) in args {
        body.push_str(&format!("<{name}>{}</{name}>", xml::escape(value)));
    }
    body.push_str(&format!("</u:{action}></s:Body></s:Envelope>\r\n"));
    body
}

/// A SOAP fault's `errorCode` and `errorDescription`; `None` when the text is not XML
/// or has no numeric `errorCode`.
fn parse_fault(xml_text: &str) -> Option<(u16, String)> {
    let doc = xml::Xml::parse(xml_text).ok()?;
    let code = doc.text("errorCode")?.parse().ok()?;
    Some((code, doc.text("errorDescription").unwrap_or_default()))
}

/// Parses a SOAP answer whose values are needed.
fn answer(text: &str) -> Result<xml::Xml<'_>, UpnpError> {
    xml::Xml::parse(text).map_err(UpnpError::Xml)
}

impl Igd {
    /// Fetches and parses the device description at `location`; finds our local
    /// address towards the gateway (a connected UDP socket; no packet is sent).
    ///
    /// # Errors
    /// HTTP errors, or [`UpnpError::NoWanService`].
    pub async fn from_location(
        http: HttpClient,
        location: &str,
        timeout: Duration,
    ) -> Result<Self, UpnpError> {
        let Description { udn, wan, v6fc } = describe(&http, location, timeout).await?;
        let local_ip = local_ip_towards(location).await;
        Ok(Self {
            http,
            timeout,
            location: location.to_owned(),
            udn,
            wan,
            v6fc,
            v6fc_over_ipv6: None,
            local_ip,
            pinhole_owners: Arc::default(),
        })
    }

    /// The control URL pinhole actions go to (the IPv6 one when known).
    pub fn pinhole_control_url(&self) -> Option<&str> {
        self.v6fc_over_ipv6
            .as_ref()
            .or(self.v6fc.as_ref())
            .map(|s| s.control_url.as_str())
    }

    /// The description URL.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The WAN connection service type in use.
    pub fn service_type(&self) -> &str {
        &self.wan.service_type
    }

    async fn soap(
        &self,
        service: &Service,
        action: &'static str,
        args: &[(&str, String)],
    ) -> Result<String, UpnpError> {
        self.soap_with(&self.http, service, action, args).await
    }

    async fn soap_with(
        &self,
        http: &HttpClient,
        service: &Service,
        action: &'static str,
        args: &[(&str, String)],
    ) -> Result<String, UpnpError> {
        let body = envelope(&service.service_type, action, args);
        let reply = http
            .request(http::Method::POST, &service.control_url)
            .header(
                "SOAPAction",
                format!("\"{}#{action}\"", service.service_type),
            )
            .body("text/xml; charset=\"utf-8\"", body)
            .timeout(self.timeout)
            .max_response_bytes(MAX_ANSWER_BYTES)
            .send()
            .await
            .map_err(UpnpError::Http)?;
        let text = String::from_utf8_lossy(&reply.body).into_owned();
        if reply.is_success() {
            return Ok(text);
        }
        match parse_fault(&text) {
            Some((code, description)) => {
                tracing::debug!(action, code, "UPnP fault");
                Err(UpnpError::Fault {
                    action,
                    code,
                    description,
                })
            }
            None => Err(UpnpError::Status {
                action,
                status: reply.status.as_u16(),
            }),
        }
    }

    fn v6fc(&self) -> Result<&Service, UpnpError> {
        self.v6fc_over_ipv6
            .as_ref()
            .or(self.v6fc.as_ref())
            .ok_or(UpnpError::NoPinholeService)
    }

    fn owners(&self) -> MutexGuard<'_, HashMap<u32, IpAddr>> {
        self.pinhole_owners.lock()
    }

    /// The client for pinhole actions on behalf of `owner`: a client bound to `owner`
    /// when the control URL is IPv6 and `owner` an IPv6 address (the gateway authorises
    /// by the caller's address), else the shared one. Pinhole actions are rare (open,
    /// renew at lease/2, delete), so the bound client is not kept.
    fn pinhole_client(&self, service: &Service, owner: Option<IpAddr>) -> HttpClient {
        let Some(owner) = owner.filter(|o| o.is_ipv6() && is_ipv6_url(&service.control_url)) else {
            return self.http.clone();
        };
        let mut config = HttpClientConfig::default();
        config.connect_timeout = self.timeout;
        config.request_timeout = self.timeout;
        config.local_address = Some(owner);
        HttpClient::new(config).unwrap_or_else(|e| {
            tracing::debug!(error = %e, "bound client unavailable; using the shared one");
            self.http.clone()
        })
    }

    /// `GetExternalIPAddress`; `None` for an empty or unspecified answer.
    ///
    /// # Errors
    /// Exchange errors and SOAP faults.
    pub async fn get_external_ip(&self) -> Result<Option<IpAddr>, UpnpError> {
        let text = self.soap(&self.wan, "GetExternalIPAddress", &[]).await?;
        let ip = answer(&text)?
            .text("NewExternalIPAddress")
            .unwrap_or_default();
        Ok(ip.parse::<IpAddr>().ok().filter(|ip| !ip.is_unspecified()))
    }

    /// `AddPortMapping`.
    ///
    /// # Errors
    /// Exchange errors and SOAP faults (718 conflict, 606, 725, …).
    pub async fn add(&self, m: &PortMapping) -> Result<(), UpnpError> {
        let args = [
            ("NewRemoteHost", String::new()),
            ("NewExternalPort", m.external_port.to_string()),
            ("NewProtocol", m.protocol.as_str().to_owned()),
            ("NewInternalPort", m.internal_port.to_string()),
            ("NewInternalClient", m.internal_client.to_string()),
            ("NewEnabled", "1".to_owned()),
            ("NewPortMappingDescription", m.description.clone()),
            ("NewLeaseDuration", m.lease.as_secs().to_string()),
        ];
        self.soap(&self.wan, "AddPortMapping", &args)
            .await
            .map(drop)
    }

    /// `DeletePortMapping`.
    ///
    /// # Errors
    /// Exchange errors and SOAP faults (714 no such entry).
    pub async fn delete(&self, external_port: u16, protocol: Protocol) -> Result<(), UpnpError> {
        let args = [
            ("NewRemoteHost", String::new()),
            ("NewExternalPort", external_port.to_string()),
            ("NewProtocol", protocol.as_str().to_owned()),
        ];
        self.soap(&self.wan, "DeletePortMapping", &args)
            .await
            .map(drop)
    }

    /// `GetSpecificPortMappingEntry`; `None` when there is no such mapping (714).
    ///
    /// # Errors
    /// Exchange errors and other SOAP faults.
    pub async fn get_mapping(
        &self,
        external_port: u16,
        protocol: Protocol,
    ) -> Result<Option<MappingEntry>, UpnpError> {
        let args = [
            ("NewRemoteHost", String::new()),
            ("NewExternalPort", external_port.to_string()),
            ("NewProtocol", protocol.as_str().to_owned()),
        ];
        let text = match self
            .soap(&self.wan, "GetSpecificPortMappingEntry", &args)
            .await
        {
            Ok(t) => t,
            Err(UpnpError::Fault { code: 714, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let doc = answer(&text)?;
        let field = |n| {
            doc.text(n)
                .ok_or(UpnpError::Malformed("mapping entry field missing"))
        };
        Ok(Some(MappingEntry {
            internal_port: field("NewInternalPort")?
                .parse()
                .map_err(|_| UpnpError::Malformed("bad NewInternalPort"))?,
            internal_client: field("NewInternalClient")?,
            enabled: field("NewEnabled")? == "1",
            lease_remaining: field("NewLeaseDuration")?.parse().unwrap_or(0),
        }))
    }

    /// `AddPinhole`; returns the `UniqueID`.
    ///
    /// # Errors
    /// [`UpnpError::NoPinholeService`], exchange errors, SOAP faults (606 refused).
    pub async fn add_pinhole_request(&self, p: &PinholeRequest) -> Result<u32, UpnpError> {
        let args = [
            ("RemoteHost", String::new()),
            ("RemotePort", "0".to_owned()),
            ("InternalClient", p.internal_client.to_string()),
            ("InternalPort", p.internal_port.to_string()),
            ("Protocol", p.protocol.number().to_string()),
            ("LeaseTime", p.lease.as_secs().to_string()),
        ];
        let service = self.v6fc()?;
        let client = self.pinhole_client(service, Some(p.internal_client));
        let text = self
            .soap_with(&client, service, "AddPinhole", &args)
            .await?;
        let id = answer(&text)?
            .text("UniqueID")
            .and_then(|id| id.parse().ok())
            .ok_or(UpnpError::Malformed("AddPinhole answer without UniqueID"))?;
        self.owners().insert(id, p.internal_client);
        Ok(id)
    }

    /// `UpdatePinhole`.
    ///
    /// # Errors
    /// As [`Igd::add_pinhole_request`].
    pub async fn update_pinhole_lease(&self, id: u32, lease: Duration) -> Result<(), UpnpError> {
        let args = [
            ("UniqueID", id.to_string()),
            ("NewLeaseTime", lease.as_secs().to_string()),
        ];
        let service = self.v6fc()?;
        let owner = self.owners().get(&id).copied();
        let client = self.pinhole_client(service, owner);
        self.soap_with(&client, service, "UpdatePinhole", &args)
            .await
            .map(drop)
    }

    /// `DeletePinhole`.
    ///
    /// # Errors
    /// As [`Igd::add_pinhole_request`].
    pub async fn delete_pinhole_id(&self, id: u32) -> Result<(), UpnpError> {
        let args = [("UniqueID", id.to_string())];
        let service = self.v6fc()?;
        let owner = self.owners().get(&id).copied();
        let client = self.pinhole_client(service, owner);
        let result = self
            .soap_with(&client, service, "DeletePinhole", &args)
            .await
            .map(drop);
        if result.is_ok() {
            self.owners().remove(&id);
        }
        result
    }
}

impl Gateway for Igd {
    fn local_ip(&self) -> Option<IpAddr> {
        self.local_ip
    }

    fn has_pinhole_service(&self) -> bool {
        self.v6fc.is_some()
    }

    fn external_ip(&self) -> BoxFuture<'_, Result<Option<IpAddr>, UpnpError>> {
        Box::pin(self.get_external_ip())
    }

    fn add_port_mapping<'a>(&'a self, m: &'a PortMapping) -> BoxFuture<'a, Result<(), UpnpError>> {
        Box::pin(self.add(m))
    }

    fn delete_port_mapping(
        &self,
        external_port: u16,
        protocol: Protocol,
    ) -> BoxFuture<'_, Result<(), UpnpError>> {
        Box::pin(self.delete(external_port, protocol))
    }

    fn mapping_entry(
        &self,
        external_port: u16,
        protocol: Protocol,
    ) -> BoxFuture<'_, Result<Option<MappingEntry>, UpnpError>> {
        Box::pin(self.get_mapping(external_port, protocol))
    }

    fn add_pinhole<'a>(&'a self, p: &'a PinholeRequest) -> BoxFuture<'a, Result<u32, UpnpError>> {
        Box::pin(self.add_pinhole_request(p))
    }

    fn update_pinhole(&self, id: u32, lease: Duration) -> BoxFuture<'_, Result<(), UpnpError>> {
        Box::pin(self.update_pinhole_lease(id, lease))
    }

    fn delete_pinhole(&self, id: u32) -> BoxFuture<'_, Result<(), UpnpError>> {
        Box::pin(self.delete_pinhole_id(id))
    }
}

/// Our source address towards the host of `url` (a connected UDP socket sends nothing).
async fn local_ip_towards(url: &str) -> Option<IpAddr> {
    let host = crate::addr::endpoint_host(url)?;
    let ip: IpAddr = host.parse().ok()?;
    let bind: SocketAddr = if ip.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = tokio::net::UdpSocket::bind(bind).await.ok()?;
    socket.connect(SocketAddr::new(ip, 9)).await.ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESC: &str = r#"<?xml version="1.0"?><root xmlns="urn:schemas-upnp-org:device-1-0"><device><UDN>uuid:root-0001</UDN><serviceList>
        <service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType><controlURL>/ctl/L3F</controlURL></service>
        </serviceList><deviceList><device><UDN>uuid:wan-0002</UDN><deviceList><device><UDN>uuid:wcd-0003</UDN><serviceList>
        <service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><controlURL>/ctl/IPConn1</controlURL></service>
        <service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:2</serviceType><controlURL>ctl/IPConn</controlURL></service>
        <service><serviceType>urn:schemas-upnp-org:service:WANIPv6FirewallControl:1</serviceType><controlURL>http://10.0.0.1:5000/ctl/IP6FCtl</controlURL></service>
        </serviceList></device></deviceList></device></deviceList></device></root>"#;

    #[test]
    fn description_picks_services() {
        let Description { udn, wan, v6fc: v6 } =
            parse_description("http://10.77.1.1:5000/rootDesc.xml", DESC).unwrap();
        assert_eq!(
            udn.as_deref(),
            Some("uuid:root-0001"),
            "the root device's UDN"
        );
        assert_eq!(wan.service_type, WAN_CONNECTION_SERVICES[0]);
        assert_eq!(wan.control_url, "http://10.77.1.1:5000/ctl/IPConn");
        assert_eq!(v6.unwrap().control_url, "http://10.0.0.1:5000/ctl/IP6FCtl");
        let ppp = r#"<root><URLBase>http://192.168.1.1:49000/</URLBase><service><serviceType>urn:schemas-upnp-org:service:WANPPPConnection:1</serviceType><controlURL>/upnp/control/WANPPPConn1</controlURL></service></root>"#;
        let Description { udn, wan, v6fc: v6 } =
            parse_description("http://192.168.1.1:49000/igddesc.xml", ppp).unwrap();
        assert_eq!(udn, None);
        assert_eq!(
            wan.control_url,
            "http://192.168.1.1:49000/upnp/control/WANPPPConn1"
        );
        assert!(v6.is_none());
        assert!(matches!(
            parse_description("http://x/", "<root/>"),
            Err(UpnpError::NoWanService)
        ));
    }

    #[test]
    fn envelope_and_fault() {
        let e = envelope(
            WAN_CONNECTION_SERVICES[1],
            "AddPortMapping",
            &[("NewPortMappingDescription", "a<b".into())],
        );
        assert!(e.contains(
            "<u:AddPortMapping xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\">"
        ));
        assert!(e.contains("<NewPortMappingDescription>a&lt;b</NewPortMappingDescription>"));
        // namespaces declared: an undeclared prefix is not XML (below)
        let fault = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail><UPnPError xmlns="urn:schemas-upnp-org:control-1-0"><errorCode>718</errorCode><errorDescription>ConflictInMappingEntry</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>"#;
        assert_eq!(
            parse_fault(fault),
            Some((718, "ConflictInMappingEntry".to_owned()))
        );
        assert_eq!(parse_fault("<x/>"), None);
        assert_eq!(
            parse_fault("<s:Fault><errorCode>718</errorCode></s:Fault>"),
            None
        );
        assert_eq!(parse_fault("<e><errorCode>7x</errorCode></e>"), None);
        assert_eq!(parse_fault("<e><errorCode>99999</errorCode></e>"), None);
        assert_eq!(parse_fault("Internal Server Error"), None);
        assert_eq!(
            parse_fault("<e><errorCode> 606 </errorCode></e>"),
            Some((606, String::new()))
        );
    }

    #[test]
    fn the_default_search_is_the_ipv4_group() {
        // the default IPv4 search goes through rupnp (`ssdp::search_v4_group`)
        assert_eq!(DiscoveryConfig::default().ssdp_target, ssdp::SSDP_GROUP_V4);
    }

    #[test]
    fn description_refuses_garbage_and_keeps_limits() {
        let loc = "http://10.77.1.1:5000/rootDesc.xml";
        for bad in ["", "not xml", "<root><service>", "<root>&nope;</root>"] {
            assert!(
                matches!(parse_description(loc, bad), Err(UpnpError::Xml(_))),
                "{bad:?}"
            );
        }
        // a service without controlURL is skipped, not an error of the whole description
        let partial = r#"<root><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:2</serviceType></service>
            <service><serviceType>urn:schemas-upnp-org:service:WANPPPConnection:1</serviceType><controlURL> /ppp </controlURL></service></root>"#;
        let d = parse_description(loc, partial).unwrap();
        assert_eq!(d.wan.service_type, WAN_CONNECTION_SERVICES[2]);
        assert_eq!(d.wan.control_url, "http://10.77.1.1:5000/ppp");
        // a URLBase that is not http:// is ignored; escaped text is unescaped
        let based = r#"<root><URLBase>ftp://x/</URLBase><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><controlURL>/c?a=1&amp;b=2</controlURL></service></root>"#;
        let d = parse_description(loc, based).unwrap();
        assert_eq!(d.wan.control_url, "http://10.77.1.1:5000/c?a=1&b=2");
        // too many nodes: refused before any service is looked at
        let huge = format!(
            "<root>{}</root>",
            "<x/>".repeat(xml::MAX_NODES as usize + 1)
        );
        assert!(matches!(
            parse_description(loc, &huge),
            Err(UpnpError::Xml(_))
        ));
    }
}
