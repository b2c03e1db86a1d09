//! Dispatch tickets (§8.5), consumer tokens (§8.10) and relay tickets (§14.6) verified
//! with the `iicp-proto` verifiers; operator rename (§17.3) and credit receipts (§8.11).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use common::*;
use http::Method;
use iicp_directory::ManualClock;
use iicp_proto::crypto::mac::{response_hash, Receipt};
use iicp_proto::crypto::sign::{sign_rename, OperatorKey};
use iicp_proto::crypto::token::{
    directory_origin, verify_consumer_token, verify_dispatch_ticket, verify_relay_ticket,
    DirectoryPublicKey, DispatchTicketCheck,
};
use rand_core::OsRng;
use serde_json::json;

#[tokio::test]
async fn tickets_and_tokens_verify() {
    for backend in backends() {
        let clock = ManualClock::starting_now();
        let d = start_mesh(backend, &clock).await;
        let base = d.base.clone();
        let a = register(
            &base,
            &register_body("http://127.0.0.1:19201", "eu", &["m"]),
        )
        .await;
        let b = register(
            &base,
            &register_body("http://127.0.0.1:19202", "eu", &["m"]),
        )
        .await;
        let (ida, idb) = (
            a["node_id"].as_str().unwrap(),
            b["node_id"].as_str().unwrap(),
        );

        let key = get(&format!("{base}/api/v1/directory-key")).await;
        assert_eq!(key.status, 200);
        assert_eq!(key.body["algorithm"], "ed25519");
        let pk = DirectoryPublicKey::from_hex(key.body["public_key"].as_str().unwrap()).unwrap();
        assert_eq!(pk, d.directory.public_key());
        // The SDKs check iss against the origin of the directory URL they were given.
        let issuer = directory_origin(&format!("{base}/api")).to_owned();
        assert_eq!(issuer, base);

        // dispatch ticket, then the next one excluding the first node, then none left
        let mut excluded: Vec<String> = Vec::new();
        let mut seen = Vec::new();
        for _ in 0..2 {
            let r = post(
                &format!("{base}/api/v1/dispatch/ticket"),
                &json!({"intent": CHAT, "qos": "interactive", "limit": 10, "exclude_node_id_prefixes": excluded}),
                None,
            )
            .await;
            assert_eq!(r.status, 201, "{}", r.body);
            assert_eq!(r.body["data_class"], "ticketed_route_dispatch");
            assert_eq!(r.body["prompt_payload_accepted"], false);
            let node_id = r.body["node_id"].as_str().unwrap();
            assert_eq!(r.body["route"]["node_id"], node_id);
            assert!(
                r.body["route"]["endpoint"].is_string() && r.body["route"]["score"].is_number()
            );
            let claims = verify_dispatch_ticket(
                &pk,
                r.body["ticket"].as_str().unwrap(),
                &DispatchTicketCheck {
                    issuer: &issuer,
                    node_id,
                    intent: CHAT,
                    policy_manifest_sha256: None,
                },
                clock.now_secs_for_test(),
            )
            .unwrap();
            assert_eq!(claims.jti.len(), 24);
            excluded.push(node_id[..8].to_owned());
            seen.push(node_id.to_owned());
        }
        seen.sort();
        let mut both = vec![ida.to_owned(), idb.to_owned()];
        both.sort();
        assert_eq!(seen, both);
        let r = post(
            &format!("{base}/v1/dispatch/ticket"),
            &json!({"intent": CHAT, "exclude_node_id_prefixes": excluded}),
            None,
        )
        .await;
        assert_eq!(r.status, 404);
        assert_eq!(r.code(), Some("no_route_available"));
        // select by node id
        let r = post(
            &format!("{base}/v1/dispatch/ticket"),
            &json!({"intent": CHAT, "node_id": idb}),
            None,
        )
        .await;
        assert_eq!(r.body["node_id"], idb);

        // consumer token: caller a → target b
        let ta = a["node_token"].as_str().unwrap();
        let r = post(
            &format!("{base}/api/v1/consumer-token"),
            &json!({"target_node_id": idb, "intent": CHAT}),
            Some(ta),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let claims = verify_consumer_token(
            &pk,
            r.body["token"].as_str().unwrap(),
            idb,
            CHAT,
            clock.now_secs_for_test(),
        )
        .unwrap();
        assert_eq!(claims.sub, ida);
        assert_eq!(claims.iss, issuer);
        let r = post(
            &format!("{base}/api/v1/consumer-token"),
            &json!({"target_node_id": idb, "intent": CHAT}),
            None,
        )
        .await;
        assert_eq!(r.status, 401);
        let r = post(
            &format!("{base}/api/v1/consumer-token"),
            &json!({"target_node_id": "unknown", "intent": CHAT}),
            Some(ta),
        )
        .await;
        assert_eq!(r.status, 404);

        // relay ticket with X-Node-Id
        let c = client();
        let reply = c
            .post_json(
                format!("{base}/api/v1/relay/ticket"),
                &json!({"relay_node_id": idb}),
            )
            .bearer(ta.to_owned())
            .header("X-Node-Id", ida)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status.as_u16(), 201);
        let v: serde_json::Value = reply.json().unwrap();
        verify_relay_ticket(
            &pk,
            v["ticket"].as_str().unwrap(),
            ida,
            idb,
            clock.now_secs_for_test(),
        )
        .unwrap();

        // credits award with the receipt HMAC
        let hmac = a["node_hmac_key"].as_str().unwrap();
        let rh = response_hash(&json!({"text": "hi"}));
        let nonce = "0123456789abcdef0123456789abcdef";
        let receipt = Receipt {
            task_id: "t-1",
            tokens_used: 120,
            nonce,
            response_hash: &rh,
            querying_node_id: None,
        };
        let body = json!({"node_id": ida, "task_id": "t-1", "tokens_used": 120, "amount": 0.12, "nonce": nonce,
            "expires_at": "2999-01-01T00:00:00+00:00", "signature": receipt.sign(hmac), "response_hash": rh, "reason": "task_completion"});
        let r = post(&format!("{base}/api/v1/credits/award"), &body, Some(ta)).await;
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.body["awarded"], 0.12);
        let r = post(&format!("{base}/api/v1/credits/award"), &body, Some(ta)).await;
        assert_eq!(r.status, 409, "nonce replay");
        let mut forged = body.clone();
        forged["nonce"] = json!("ffffffffffffffffffffffffffffffff");
        let r = post(&format!("{base}/api/v1/credits/award"), &forged, Some(ta)).await;
        assert_eq!(r.status, 422);
        assert_eq!(r.code(), Some("IICP-E027"));
        let r = call(
            Method::GET,
            &format!("{base}/api/v1/credits/balance"),
            None,
            Some(ta),
        )
        .await;
        assert_eq!(r.body["balance"], 0.12);
        let r = call(
            Method::GET,
            &format!("{base}/api/v1/credits/transactions"),
            None,
            Some(ta),
        )
        .await;
        assert_eq!(r.body["count"], 1);
        // the summary `iicp credits` shows: the token must match the node asked about
        let r = call(
            Method::GET,
            &format!("{base}/api/v1/credits/summary?node_id={ida}"),
            None,
            Some(ta),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["node_id"], ida);
        assert_eq!(r.body["balance"], 0.12);
        assert_eq!(r.body["total_earned"], 0.12);
        assert_eq!(r.body["total_spent"], 0.0);
        assert_eq!(r.body["tx_count"], 1);
        assert_eq!(r.body["reconciles"], true);
        let r = call(
            Method::GET,
            &format!("{base}/api/v1/credits/summary?node_id={idb}"),
            None,
            Some(ta),
        )
        .await;
        assert_eq!(r.status, 401, "another node's ledger: {}", r.body);
        let r = call(
            Method::GET,
            &format!("{base}/api/v1/credits/summary?node_id={ida}"),
            None,
            None,
        )
        .await;
        assert_eq!(r.status, 401);
        // telemetry takes the proxy token only
        let r = post(
            &format!("{base}/v1/telemetry"),
            &json!({"node_id": ida}),
            Some(ta),
        )
        .await;
        assert_eq!(r.code(), Some("IICP-E032"));
        let r = post(
            &format!("{base}/v1/telemetry"),
            &json!({"node_id": ida}),
            a["proxy_token"].as_str(),
        )
        .await;
        assert_eq!(r.status, 200);

        // operator rename
        let op = OperatorKey::generate(&mut OsRng);
        let rename = sign_rename(&op, "Acme Labs", clock.now_secs_for_test());
        let r = post(
            &format!("{base}/api/v1/operator/rename"),
            &serde_json::to_value(&rename).unwrap(),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let r = post(
            &format!("{base}/api/v1/operator/rename"),
            &serde_json::to_value(&rename).unwrap(),
            None,
        )
        .await;
        assert_eq!(r.status, 409, "replayed rename");
        let mut bad = sign_rename(&op, "Evil", clock.now_secs_for_test() + 1);
        bad.display_name = "Other".into();
        let r = post(
            &format!("{base}/api/v1/operator/rename"),
            &serde_json::to_value(&bad).unwrap(),
            None,
        )
        .await;
        assert_eq!(r.status, 401);
        d.stop().await;
    }
}

trait NowSecs {
    fn now_secs_for_test(&self) -> u64;
}

impl NowSecs for ManualClock {
    fn now_secs_for_test(&self) -> u64 {
        use iicp_directory::Clock;
        self.now_secs()
    }
}
