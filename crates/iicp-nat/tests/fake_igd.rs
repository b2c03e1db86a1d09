//! A fake IGD over loopback (SSDP responder + HTTP/SOAP server) for what miniupnpd
//! cannot produce on demand: error 606 (auth required, pinhole refused), 718 (conflict)
//! and 502 (rate limited). Drives the real SSDP/SOAP client and the executor.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use iicp_nat::upnp::{BoxFuture, Gateway, PinholeRequest, Protocol};
use iicp_nat::{
    Executor, ExecutorConfig, Guidance, InterfaceAddr, KeeperConfig, Observations, ProbeVerdict,
    Prober, RelayBinder, RelayObservation, Settings, Tier, TransportMethod,
};

mod igd;

use igd::FakeIgd;

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
async fn conflict_718_with_a_stale_mapping_of_ours_deletes_and_re_adds() {
    let igd = FakeIgd::start("11.77.2.1").await;
    // our own mapping from an earlier run (the gateway sees us at the address we reach
    // it from, loopback here), then a conflict the gateway reports
    igd.preset_mapping(19484, "127.0.0.1");
    igd.fail("AddPortMapping", &[718]);
    let out = Executor::default()
        .with_discovery(igd.discovery())
        .run(obs(&["192.168.1.20"]))
        .await;
    assert_eq!(out.tier(), Tier::UpnpMapped);
    assert_eq!(out.endpoint(), Some("http://11.77.2.1:19484"));
    assert_eq!(
        igd.calls(),
        [
            "GetExternalIPAddress",
            "AddPortMapping",
            "GetSpecificPortMappingEntry",
            "DeletePortMapping",
            "AddPortMapping"
        ]
    );
}

#[tokio::test]
async fn conflict_718_with_another_hosts_mapping_takes_the_next_port() {
    let igd = FakeIgd::start("11.77.2.1").await;
    // another LAN host serves on the same port and mapped it first
    igd.preset_mapping(19484, "192.168.1.99");
    let out = Executor::default()
        .with_discovery(igd.discovery())
        .run(obs(&["192.168.1.20"]))
        .await;
    assert_eq!(out.tier(), Tier::UpnpMapped);
    assert_eq!(out.endpoint(), Some("http://11.77.2.1:19485"), "{out:?}");
    assert!(
        !igd.calls().iter().any(|c| c == "DeletePortMapping"),
        "another host's mapping is never deleted: {:?}",
        igd.calls()
    );
    {
        let st = igd.state.lock().unwrap();
        assert_eq!(st.mappings["19484"], "192.168.1.99", "left as it was");
        assert_eq!(st.mappings["19485"], "127.0.0.1", "ours, at the next port");
    }
    // two ports taken: the third
    let igd = FakeIgd::start("11.77.2.1").await;
    igd.preset_mapping(19484, "192.168.1.99");
    igd.preset_mapping(19485, "192.168.1.98");
    let out = Executor::default()
        .with_discovery(igd.discovery())
        .run(obs(&["192.168.1.20"]))
        .await;
    assert_eq!(out.endpoint(), Some("http://11.77.2.1:19486"), "{out:?}");
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

#[tokio::test]
async fn pinholes_go_to_the_ipv6_control_url_from_the_pinhole_address() {
    // The gateway answers SSDP on both faces with one device UUID; mappings stay on the
    // IPv4 control URL, pinhole actions go to the IPv6 one, from the address opened
    // (`::1` here, the one global-looking address a test can bind).
    let igd = FakeIgd::start_dual("100.64.3.4").await;
    let found = igd.discovery().find().await.unwrap().expect("gateway");
    assert_eq!(
        found.location(),
        format!("http://{}/rootDesc.xml", igd.http)
    );
    let v6_url = format!("http://{}/ctl/IP6FCtl", igd.http6.unwrap());
    assert_eq!(found.pinhole_control_url(), Some(v6_url.as_str()));
    assert_eq!(
        found.get_external_ip().await.unwrap(),
        "100.64.3.4".parse().ok()
    );
    let owner: std::net::IpAddr = "::1".parse().unwrap();
    let id = found
        .add_pinhole_request(&PinholeRequest {
            internal_client: owner,
            internal_port: 19484,
            protocol: Protocol::Tcp,
            lease: Duration::from_secs(60),
        })
        .await
        .unwrap();
    found
        .update_pinhole_lease(id, Duration::from_secs(60))
        .await
        .unwrap();
    found.delete_pinhole_id(id).await.unwrap();
    let peers = igd.state.lock().unwrap().peers.clone();
    let by = |action: &str| -> Vec<std::net::IpAddr> {
        peers
            .iter()
            .filter(|(a, _)| a == action)
            .map(|(_, p)| p.ip())
            .collect()
    };
    assert_eq!(
        by("GetExternalIPAddress"),
        vec!["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    for action in ["AddPinhole", "UpdatePinhole", "DeletePinhole"] {
        assert_eq!(by(action), vec![owner], "{action}: {peers:?}");
    }
}

#[tokio::test]
async fn without_an_ipv6_answer_pinholes_use_the_ipv4_control_url() {
    let igd = FakeIgd::start("100.64.3.4").await;
    let found = igd.discovery().find().await.unwrap().expect("gateway");
    let v4_url = format!("http://{}/ctl/IP6FCtl", igd.http);
    assert_eq!(found.pinhole_control_url(), Some(v4_url.as_str()));
}

/// A hostile or broken gateway: a description that is fine, then answers that are not
/// XML, too large, or HTTP errors without a SOAP fault. Each is a clear error, never a
/// panic or an unbounded read.
#[tokio::test]
async fn a_broken_gateway_gives_clear_errors() {
    use http::{Method, StatusCode};
    use iicp_nat::upnp::{Igd, PortMapping, UpnpError};
    use iicp_transport::http::server::ResponseBody;
    use iicp_transport::http::{HttpClient, HttpClientConfig, HttpServer, Router};

    fn reply(status: StatusCode, body: String) -> http::Response<ResponseBody> {
        http::Response::builder()
            .status(status)
            .header("content-type", "text/xml")
            .body(ResponseBody::from(body))
            .unwrap()
    }
    const DESC: &str = r#"<?xml version="1.0"?><root xmlns="urn:schemas-upnp-org:device-1-0"><device><serviceList>
<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><controlURL>/ctl/IPConn</controlURL></service>
</serviceList></device></root>"#;
    let router = Router::new()
        .route(Method::GET, "/rootDesc.xml", |_r, _p| async {
            reply(StatusCode::OK, DESC.to_owned())
        })
        .route(Method::GET, "/huge.xml", |_r, _p| async {
            reply(
                StatusCode::OK,
                format!("<root>{}</root>", "x".repeat(1 << 20)),
            )
        })
        .route(Method::GET, "/garbage.xml", |_r, _p| async {
            reply(StatusCode::OK, "<root><device>".to_owned())
        })
        .route(Method::POST, "/ctl/IPConn", |req, _p| async move {
            let action = req
                .headers()
                .get("soapaction")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            if action.contains("GetExternalIPAddress") {
                reply(StatusCode::OK, "<<< not xml".to_owned())
            } else if action.contains("GetSpecificPortMappingEntry") {
                reply(StatusCode::OK, "y".repeat(1 << 20))
            } else {
                reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal Server Error".to_owned(),
                )
            }
        });
    let server = HttpServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let (_trigger, stop) = iicp_transport::shutdown::channel();
    tokio::spawn(server.serve(router, stop));
    let http = HttpClient::new(HttpClientConfig::default()).unwrap();
    let t = Duration::from_secs(2);

    let huge = Igd::from_location(http.clone(), &format!("http://{addr}/huge.xml"), t).await;
    assert!(matches!(huge, Err(UpnpError::Http(_))), "{huge:?}");
    let garbage = Igd::from_location(http.clone(), &format!("http://{addr}/garbage.xml"), t).await;
    assert!(matches!(garbage, Err(UpnpError::Xml(_))), "{garbage:?}");

    let igd = Igd::from_location(http, &format!("http://{addr}/rootDesc.xml"), t)
        .await
        .unwrap();
    let ip = igd.get_external_ip().await;
    assert!(matches!(ip, Err(UpnpError::Xml(_))), "{ip:?}");
    let entry = igd.get_mapping(19484, Protocol::Tcp).await;
    assert!(matches!(entry, Err(UpnpError::Http(_))), "{entry:?}");
    let added = igd
        .add(&PortMapping {
            external_port: 19484,
            internal_port: 19484,
            internal_client: "127.0.0.1".parse().unwrap(),
            protocol: Protocol::Tcp,
            lease: Duration::from_secs(60),
            description: "iicp".into(),
        })
        .await;
    assert!(
        matches!(
            added,
            Err(UpnpError::Status {
                action: "AddPortMapping",
                status: 500
            })
        ),
        "{added:?}"
    );
    assert_eq!(added.unwrap_err().code(), None);
}
