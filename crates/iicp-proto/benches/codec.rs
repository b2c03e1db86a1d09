//! Codec benchmarks: frame header, CALL and RESPONSE frames (encode and decode) at
//! 64 B, 1 KiB, 64 KiB and 1 MiB payloads, and the JSON task bodies of `POST /v1/task`.
//!
//! `cargo bench -p iicp-proto --bench codec` (add `-- --quick` for a fast pass).
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use iicp_proto::frame::{Decoded, Frame, FrameHeader, MessageType, MAX_PAYLOAD};
use iicp_proto::message::{Body, Call, Channel, Message, Response};
use iicp_proto::task::{TaskRequest, TaskResponse};
use serde_json::json;

const SIZES: [(usize, &str); 4] = [
    (64, "64B"),
    (1024, "1KiB"),
    (64 * 1024, "64KiB"),
    (1024 * 1024, "1MiB"),
];

/// A chat payload whose JSON is about `n` bytes.
fn chat(n: usize) -> serde_json::Value {
    let text = "x".repeat(n.saturating_sub(44).max(1));
    json!({"messages": [{"role": "user", "content": text}]})
}

fn call(n: usize) -> Call {
    Call {
        protocol_version: Some(1),
        session_id: Some("6f1c2a9e-0b7d-4e0a-9a43-5d2b8f0e7c11".into()),
        intent: Some("urn:iicp:intent:llm:chat:v1".into()),
        payload: Some(Body::json(&chat(n))),
        timeout_s: Some(30),
        call_id: Some("6f1c2a9e-0b7d-4e0a-9a43-5d2b8f0e7c11".into()),
        idempotency_key: Some("0d9b6c52-1f3e-4a8b-b2c4-7e6f5a4d3c2b".into()),
        qos: Some("best-effort".into()),
        ..Call::default()
    }
}

fn response(n: usize) -> Response {
    let result = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "y".repeat(n.saturating_sub(90).max(1))}, "finish_reason": "stop"}]});
    Response::success(&call(16), Body::cbor(&result))
}

fn frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_header");
    let header = FrameHeader::new(MessageType::CALL, 1234);
    let bytes = header.encode();
    g.bench_function("encode", |b| {
        b.iter(|| black_box(black_box(&header).encode()))
    });
    g.bench_function("parse", |b| {
        b.iter(|| FrameHeader::parse(black_box(&bytes)).unwrap())
    });
    g.finish();

    for (name, make) in [
        ("call", (|n| Message::Call(call(n))) as fn(usize) -> Message),
        ("response", |n| Message::Response(response(n))),
    ] {
        let mut g = c.benchmark_group(name);
        for (size, label) in SIZES {
            let msg = make(size);
            let frame = msg.to_frame().unwrap();
            g.throughput(Throughput::Bytes(frame.len() as u64));
            g.bench_with_input(BenchmarkId::new("encode", label), &msg, |b, m| {
                let mut out = Vec::with_capacity(frame.len());
                b.iter(|| {
                    out.clear();
                    m.encode(&mut out).unwrap();
                    black_box(out.len())
                })
            });
            g.bench_with_input(BenchmarkId::new("decode", label), &frame, |b, f| {
                b.iter(|| {
                    let Decoded::Complete { frame, .. } =
                        Frame::decode(black_box(f), MAX_PAYLOAD).unwrap()
                    else {
                        unreachable!()
                    };
                    Message::decode(&frame.header, frame.payload, Channel::Task).unwrap()
                })
            });
        }
        g.finish();
    }
}

fn json_bodies(c: &mut Criterion) {
    let mut g = c.benchmark_group("task_json");
    for (size, label) in SIZES {
        let intent = iicp_proto::intent::Intent::new("urn:iicp:intent:llm:chat:v1").unwrap();
        let id = iicp_proto::ids::TaskId::parse("6f1c2a9e-0b7d-4e0a-9a43-5d2b8f0e7c11").unwrap();
        let req = TaskRequest::new(id.clone(), &intent, chat(size));
        let req_bytes = serde_json::to_vec(&req).unwrap();
        g.throughput(Throughput::Bytes(req_bytes.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("request_serialize", label),
            &req,
            |b, r| b.iter(|| serde_json::to_vec(black_box(r)).unwrap()),
        );
        g.bench_with_input(
            BenchmarkId::new("request_parse", label),
            &req_bytes,
            |b, bytes| {
                b.iter(|| {
                    let r: TaskRequest = serde_json::from_slice(black_box(bytes)).unwrap();
                    r.validate().unwrap();
                    r
                })
            },
        );
        let resp = TaskResponse::success(
            id,
            json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "y".repeat(size)}, "finish_reason": "stop"}]}),
        );
        let resp_bytes = serde_json::to_vec(&resp).unwrap();
        g.bench_with_input(
            BenchmarkId::new("response_serialize", label),
            &resp,
            |b, r| b.iter(|| serde_json::to_vec(black_box(r)).unwrap()),
        );
        g.bench_with_input(
            BenchmarkId::new("response_parse", label),
            &resp_bytes,
            |b, bytes| b.iter(|| TaskResponse::parse(200, black_box(bytes)).unwrap()),
        );
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = frames, json_bodies
}
criterion_main!(benches);
