//! A fake IGD over loopback (SSDP responder + HTTP/SOAP server) for what miniupnpd
//! cannot produce on demand, shared by `iicp-nat/tests/fake_igd.rs` and, through
//! `#[path]`, by `iicp-cli/tests/reach.rs` (a node mapping its port through it).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use iicp_nat::upnp::{DiscoveryConfig, UpnpDiscovery};
use iicp_transport::http::server::{read_body, PeerAddr, ResponseBody};
use iicp_transport::http::{HttpClient, HttpClientConfig, HttpServer, Router};
use iicp_transport::shutdown::{self, Trigger};
use tokio::net::UdpSocket;

const DESC: &str = r#"<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0"><device><deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType>
<deviceList><device><deviceList><device><serviceList>
<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><controlURL>/ctl/IPConn</controlURL></service>
<service><serviceType>urn:schemas-upnp-org:service:WANIPv6FirewallControl:1</serviceType><controlURL>/ctl/IP6FCtl</controlURL></service>
</serviceList></device></deviceList></device></deviceList></device></root>"#;

#[derive(Default)]
pub struct FakeState {
    pub external_ip: String,
    pub faults: HashMap<String, VecDeque<u16>>,
    pub calls: Vec<String>,
    /// Each SOAP call with the address it came from.
    pub peers: Vec<(String, SocketAddr)>,
    pub mappings: HashMap<String, String>,
}

pub struct FakeIgd {
    pub state: Arc<Mutex<FakeState>>,
    pub http: SocketAddr,
    pub ssdp: SocketAddr,
    /// The IPv6 face ([`FakeIgd::start_dual`]): HTTP and SSDP on `[::1]`.
    pub http6: Option<SocketAddr>,
    pub ssdp6: Option<SocketAddr>,
    _trigger: Trigger,
}

/// The device UUID both faces announce in `USN` (pairing itself goes by description).
const UUID: &str = "uuid:0f1e2d3c-fake-4000-8000-000000000001";

impl FakeIgd {
    pub async fn start(external_ip: &str) -> Self {
        Self::start_with(external_ip, false).await
    }

    /// A gateway that also answers on IPv6 loopback, as the same device.
    pub async fn start_dual(external_ip: &str) -> Self {
        Self::start_with(external_ip, true).await
    }

    async fn start_with(external_ip: &str, dual: bool) -> Self {
        let state = Arc::new(Mutex::new(FakeState {
            external_ip: external_ip.into(),
            ..FakeState::default()
        }));
        let (trigger, stop) = shutdown::channel();
        let (http, ssdp) = face(&state, "127.0.0.1", &stop).await;
        let (http6, ssdp6) = if dual {
            let (h, u) = face(&state, "[::1]", &stop).await;
            (Some(h), Some(u))
        } else {
            (None, None)
        };
        Self {
            state,
            http,
            ssdp,
            http6,
            ssdp6,
            _trigger: trigger,
        }
    }

    pub fn fail(&self, action: &str, codes: &[u16]) {
        self.state
            .lock()
            .unwrap()
            .faults
            .entry(action.into())
            .or_default()
            .extend(codes);
    }

    /// A mapping of another LAN host, as if it had asked for it.
    pub fn preset_mapping(&self, external_port: u16, internal_client: &str) {
        self.state
            .lock()
            .unwrap()
            .mappings
            .insert(external_port.to_string(), internal_client.to_owned());
    }

    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Discovery settings that find this IGD (SSDP to its loopback responders; no
    /// IPv6 multicast search on the machine's interfaces).
    pub fn discovery_config(&self) -> DiscoveryConfig {
        DiscoveryConfig {
            ssdp_target: self.ssdp,
            ssdp_targets_v6: Some(self.ssdp6.into_iter().collect()),
            search_timeout: Duration::from_millis(300),
            http_timeout: Duration::from_secs(2),
        }
    }

    pub fn discovery(&self) -> Arc<UpnpDiscovery> {
        let http = HttpClient::new(HttpClientConfig::default()).unwrap();
        Arc::new(UpnpDiscovery::new(http, self.discovery_config()))
    }
}

/// One face of the gateway: an HTTP server for descriptions and SOAP, and an SSDP
/// responder pointing at it, on `host` (`127.0.0.1` or `[::1]`).
async fn face(
    state: &Arc<Mutex<FakeState>>,
    host: &str,
    stop: &shutdown::Shutdown,
) -> (SocketAddr, SocketAddr) {
    let s = Arc::clone(state);
    let router = Router::new()
        .route(Method::GET, "/rootDesc.xml", |_r, _p| async {
            xml(StatusCode::OK, DESC.to_owned())
        })
        .route(Method::POST, "/ctl/{svc}", move |mut req, _p| {
            let s = Arc::clone(&s);
            async move {
                let action = req
                    .headers()
                    .get("soapaction")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim_matches('"').split_once('#'))
                    .map(|(_, a)| a.to_owned())
                    .unwrap_or_default();
                if let Some(peer) = req.extensions().get::<PeerAddr>() {
                    s.lock().unwrap().peers.push((action.clone(), peer.0));
                }
                let body = read_body(&mut req, 64 * 1024).await.unwrap();
                let body = String::from_utf8_lossy(&body).into_owned();
                answer(&s, &action, &body)
            }
        });
    let server = HttpServer::bind(format!("{host}:0").parse().unwrap())
        .await
        .unwrap();
    let http = server.local_addr().unwrap();
    tokio::spawn(server.serve(router, stop.clone()));
    // SSDP responder: answers any M-SEARCH with our description URL
    let udp = UdpSocket::bind(format!("{host}:0")).await.unwrap();
    let ssdp = udp.local_addr().unwrap();
    let stop2 = stop.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        loop {
            tokio::select! {
                r = udp.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { break };
                    if buf[..n].starts_with(b"M-SEARCH") {
                        let reply = format!("HTTP/1.1 200 OK\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nUSN: {UUID}::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLOCATION: http://{http}/rootDesc.xml\r\n\r\n");
                        let _ = udp.send_to(reply.as_bytes(), from).await;
                    }
                }
                _ = stop2.cancelled() => break,
            }
        }
    });
    (http, ssdp)
}

fn xml(status: StatusCode, body: String) -> http::Response<ResponseBody> {
    http::Response::builder()
        .status(status)
        .header("content-type", "text/xml; charset=\"utf-8\"")
        .body(ResponseBody::from(body))
        .unwrap()
}

fn tag(body: &str, name: &str) -> String {
    body.split(&format!("<{name}>"))
        .nth(1)
        .and_then(|r| r.split(&format!("</{name}>")).next())
        .unwrap_or_default()
        .to_owned()
}

fn fault(code: u16) -> http::Response<ResponseBody> {
    xml(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!(
            "<?xml version=\"1.0\"?><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail><UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>{code}</errorCode><errorDescription>scripted</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>"
        ),
    )
}

fn answer(s: &Mutex<FakeState>, action: &str, body: &str) -> http::Response<ResponseBody> {
    let mut st = s.lock().unwrap();
    st.calls.push(action.to_owned());
    if let Some(code) = st.faults.get_mut(action).and_then(VecDeque::pop_front) {
        return fault(code);
    }
    let out = match action {
        "GetExternalIPAddress" => format!(
            "<NewExternalIPAddress>{}</NewExternalIPAddress>",
            st.external_ip
        ),
        "AddPortMapping" => {
            let port = tag(body, "NewExternalPort");
            let client = tag(body, "NewInternalClient");
            // as IGDs do: a port mapped to another client is a conflict (718)
            if st.mappings.get(&port).is_some_and(|held| *held != client) {
                return fault(718);
            }
            st.mappings.insert(port, client);
            String::new()
        }
        "GetSpecificPortMappingEntry" => match st.mappings.get(&tag(body, "NewExternalPort")) {
            None => return fault(714),
            Some(client) => format!(
                "<NewInternalPort>{}</NewInternalPort><NewInternalClient>{client}</NewInternalClient><NewEnabled>1</NewEnabled><NewPortMappingDescription>x</NewPortMappingDescription><NewLeaseDuration>3000</NewLeaseDuration>",
                tag(body, "NewExternalPort")
            ),
        },
        "DeletePortMapping" => {
            st.mappings.remove(&tag(body, "NewExternalPort"));
            String::new()
        }
        "AddPinhole" => "<UniqueID>7</UniqueID>".to_owned(),
        _ => String::new(),
    };
    xml(
        StatusCode::OK,
        format!(
            "<?xml version=\"1.0\"?><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><u:{action}Response xmlns:u=\"x\">{out}</u:{action}Response></s:Body></s:Envelope>"
        ),
    )
}
