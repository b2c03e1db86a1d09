//! A fake IGD over loopback (SSDP responder + HTTP/SOAP server) for what miniupnpd
//! cannot produce on demand: error 606 (auth required, pinhole refused), 718 (conflict)
//! and 502 (rate limited). Drives the real SSDP/SOAP client and the executor.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use iicp_nat::upnp::{BoxFuture, DiscoveryConfig, Gateway, UpnpDiscovery};
use iicp_nat::{
    Executor, ExecutorConfig, Guidance, InterfaceAddr, KeeperConfig, Observations, ProbeVerdict,
    Prober, RelayBinder, RelayObservation, Settings, Tier, TransportMethod,
};
use iicp_transport::http::server::{read_body, ResponseBody};
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
struct FakeState {
    external_ip: String,
    faults: HashMap<String, VecDeque<u16>>,
    calls: Vec<String>,
    mappings: HashMap<String, String>,
}

struct FakeIgd {
    state: Arc<Mutex<FakeState>>,
    http: SocketAddr,
    ssdp: SocketAddr,
    _trigger: Trigger,
}

impl FakeIgd {
    async fn start(external_ip: &str) -> Self {
        let state = Arc::new(Mutex::new(FakeState {
            external_ip: external_ip.into(),
            ..FakeState::default()
        }));
        let s = Arc::clone(&state);
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
                    let body = read_body(&mut req, 64 * 1024).await.unwrap();
                    let body = String::from_utf8_lossy(&body).into_owned();
                    answer(&s, &action, &body)
                }
            });
        let server = HttpServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let http = server.local_addr().unwrap();
        let (trigger, stop) = shutdown::channel();
        tokio::spawn(server.serve(router, stop.clone()));
        // SSDP responder: answers any M-SEARCH with our description URL
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let ssdp = udp.local_addr().unwrap();
        let mut stop2 = stop;
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            loop {
                tokio::select! {
                    r = udp.recv_from(&mut buf) => {
                        let Ok((n, from)) = r else { break };
                        if buf[..n].starts_with(b"M-SEARCH") {
                            let reply = format!("HTTP/1.1 200 OK\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLOCATION: http://{http}/rootDesc.xml\r\n\r\n");
                            let _ = udp.send_to(reply.as_bytes(), from).await;
                        }
                    }
                    _ = stop2.fired() => break,
                }
            }
        });
        Self {
            state,
            http,
            ssdp,
            _trigger: trigger,
        }
    }

    fn fail(&self, action: &str, codes: &[u16]) {
        self.state
            .lock()
            .unwrap()
            .faults
            .entry(action.into())
            .or_default()
            .extend(codes);
    }

    fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    fn discovery(&self) -> Arc<UpnpDiscovery> {
        let http = HttpClient::new(HttpClientConfig::default()).unwrap();
        Arc::new(UpnpDiscovery::new(
            http,
            DiscoveryConfig {
                ssdp_target: self.ssdp,
                search_timeout: Duration::from_millis(300),
                http_timeout: Duration::from_secs(2),
            },
        ))
    }
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

fn answer(s: &Mutex<FakeState>, action: &str, body: &str) -> http::Response<ResponseBody> {
    let mut st = s.lock().unwrap();
    st.calls.push(action.to_owned());
    if let Some(code) = st.faults.get_mut(action).and_then(VecDeque::pop_front) {
        return xml(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "<?xml version=\"1.0\"?><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail><UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>{code}</errorCode><errorDescription>scripted</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>"
            ),
        );
    }
    let out = match action {
        "GetExternalIPAddress" => format!(
            "<NewExternalIPAddress>{}</NewExternalIPAddress>",
            st.external_ip
        ),
        "AddPortMapping" => {
            let port = tag(body, "NewExternalPort");
            let client = tag(body, "NewInternalClient");
            st.mappings.insert(port, client);
            String::new()
        }
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

fn obs(ips: &[&str]) -> Observations {
    let mut o = Observations::new(Settings {
        port: 19484,
        retry_base: Duration::from_millis(10),
        ..Settings::default()
    });
    o.interfaces = ips
        .iter()
        .map(|ip| InterfaceAddr {
            name: "eth0".into(),
            ip: ip.parse().unwrap(),
            loopback: false,
        })
        .collect();
    o
}

struct FixedProbe(ProbeVerdict);

impl Prober for FixedProbe {
    fn probe<'a>(&'a self, _host: &'a str, _port: u16) -> BoxFuture<'a, ProbeVerdict> {
        Box::pin(async move { self.0 })
    }
}

struct FixedRelay;

impl RelayBinder for FixedRelay {
    fn bind<'a>(&'a self, _c: Option<&'a str>) -> BoxFuture<'a, RelayObservation> {
        Box::pin(async {
            RelayObservation::Bound {
                endpoint: "http://relay.example:9484/v1/relay-for/me".into(),
            }
        })
    }
}

#[tokio::test]
async fn ssdp_and_description_over_loopback() {
    let igd = FakeIgd::start("11.77.2.1").await;
    let found = igd.discovery().find().await.unwrap().expect("found");
    assert_eq!(
        found.service_type(),
        "urn:schemas-upnp-org:service:WANIPConnection:1"
    );
    assert_eq!(
        found.location(),
        format!("http://{}/rootDesc.xml", igd.http)
    );
    assert!(found.has_pinhole_service());
    assert_eq!(found.local_ip(), Some("127.0.0.1".parse().unwrap()));
    assert_eq!(
        found.get_external_ip().await.unwrap(),
        Some("11.77.2.1".parse().unwrap())
    );
}

#[tokio::test]
async fn maps_keeps_and_deletes_on_stop() {
    let igd = FakeIgd::start("11.77.2.1").await;
    let ex = Executor::new(ExecutorConfig::default())
        .with_discovery(igd.discovery())
        .with_prober(Arc::new(FixedProbe(ProbeVerdict::Reachable)));
    let out = ex.run(obs(&["192.168.1.20"])).await;
    assert_eq!(out.tier(), Tier::UpnpMapped);
    assert_eq!(out.endpoint(), Some("http://11.77.2.1:19484"));
    assert_eq!(out.plan.transport_method, Some(TransportMethod::UpnpMapped));
    assert_eq!(igd.calls(), ["GetExternalIPAddress", "AddPortMapping"]);
    assert_eq!(igd.state.lock().unwrap().mappings.len(), 1);
    let keeper = out.leases.keep(KeeperConfig::default());
    keeper.stop().await;
    assert!(igd.state.lock().unwrap().mappings.is_empty());
    assert_eq!(
        igd.calls().last().map(String::as_str),
        Some("DeletePortMapping")
    );
}

#[tokio::test]
async fn conflict_718_deletes_and_re_adds() {
    let igd = FakeIgd::start("11.77.2.1").await;
    igd.fail("AddPortMapping", &[718]);
    let out = Executor::default()
        .with_discovery(igd.discovery())
        .run(obs(&["192.168.1.20"]))
        .await;
    assert_eq!(out.tier(), Tier::UpnpMapped);
    assert_eq!(
        igd.calls(),
        [
            "GetExternalIPAddress",
            "AddPortMapping",
            "DeletePortMapping",
            "AddPortMapping"
        ]
    );
}

#[tokio::test]
async fn rate_limited_502_retries_with_backoff() {
    let igd = FakeIgd::start("11.77.2.1").await;
    igd.fail("AddPortMapping", &[502, 502]);
    let started = std::time::Instant::now();
    let out = Executor::default()
        .with_discovery(igd.discovery())
        .run(obs(&["192.168.1.20"]))
        .await;
    assert_eq!(out.tier(), Tier::UpnpMapped);
    let adds = igd
        .calls()
        .iter()
        .filter(|c| *c == "AddPortMapping")
        .count();
    assert_eq!(adds, 3);
    // 10 ms + 20 ms of back-off happened (lower bound only)
    assert!(started.elapsed() >= Duration::from_millis(30));
    // always rate limited: gives up after the attempt budget and moves on
    let igd = FakeIgd::start("11.77.2.1").await;
    igd.fail("AddPortMapping", &[502; 10]);
    let out = Executor::default()
        .with_discovery(igd.discovery())
        .run(obs(&["192.168.1.20"]))
        .await;
    assert_eq!(out.tier(), Tier::LocalOnly);
    assert!(out.plan.guidance.contains(&Guidance::UpnpRateLimited));
    assert!(out.leases.is_empty());
}

#[tokio::test]
async fn auth_required_606_moves_to_the_relay() {
    let igd = FakeIgd::start("11.77.2.1").await;
    igd.fail("AddPortMapping", &[606]);
    let out = Executor::default()
        .with_discovery(igd.discovery())
        .with_relay(Arc::new(FixedRelay))
        .run(obs(&["192.168.1.20"]))
        .await;
    assert_eq!(out.tier(), Tier::Relay);
    assert_eq!(out.plan.transport_method, Some(TransportMethod::TurnRelay));
    assert!(out.plan.guidance.contains(&Guidance::UpnpAuthRequired));
}

#[tokio::test]
async fn unreachable_mapping_is_removed_before_returning() {
    let igd = FakeIgd::start("11.77.2.1").await;
    let out = Executor::default()
        .with_discovery(igd.discovery())
        .with_prober(Arc::new(FixedProbe(ProbeVerdict::Unreachable)))
        .run(obs(&["192.168.1.20"]))
        .await;
    assert_eq!(out.tier(), Tier::LocalOnly);
    assert!(out.plan.guidance.contains(&Guidance::MappedButUnreachable));
    assert!(out.leases.is_empty());
    assert!(igd.state.lock().unwrap().mappings.is_empty());
    assert_eq!(
        igd.calls().last().map(String::as_str),
        Some("DeletePortMapping")
    );
}

#[tokio::test]
async fn pinhole_refused_606_is_tier_1c_with_guidance() {
    let igd = FakeIgd::start("100.64.3.4").await;
    igd.fail("AddPinhole", &[606]);
    let out = Executor::default()
        .with_discovery(igd.discovery())
        .run(obs(&["192.168.1.20", "2a01:4f8:1:2::1234"]))
        .await;
    assert_eq!(out.tier(), Tier::Ipv6Unverified);
    assert_eq!(out.endpoint(), Some("http://[2a01:4f8:1:2::1234]:19484"));
    assert!(out.plan.guidance.contains(&Guidance::Cgnat));
    assert!(out.plan.guidance.contains(&Guidance::PinholeRefused));
    assert!(!igd.calls().contains(&"AddPortMapping".to_owned()));
}

#[tokio::test]
async fn pinhole_opened_renewed_and_deleted() {
    let igd = FakeIgd::start("100.64.3.4").await;
    let mut o = obs(&["192.168.1.20", "2a01:4f8:1:2::1234"]);
    o.settings.lease = Duration::from_millis(400);
    let out = Executor::default()
        .with_discovery(igd.discovery())
        .run(o)
        .await;
    assert_eq!(out.tier(), Tier::Ipv6Pinhole);
    assert_eq!(out.leases.pinholes.len(), 1);
    assert_eq!(out.leases.pinholes[0].id, 7);
    let keeper = out.leases.keep(KeeperConfig {
        min_interval: Duration::from_millis(100),
        ..KeeperConfig::default()
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(keeper.renewals() >= 2, "renewals: {}", keeper.renewals());
    keeper.stop().await;
    let calls = igd.calls();
    assert!(calls.contains(&"UpdatePinhole".to_owned()));
    assert_eq!(calls.last().map(String::as_str), Some("DeletePinhole"));
}
