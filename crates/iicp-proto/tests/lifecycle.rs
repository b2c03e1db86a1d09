//! The receiver's lifecycle validator against the spec vectors
//! `service-profiles-v1.json` SERVICE-LIFECYCLE-01…20 (21…23 are server rules: the
//! node's tests; see tests/data/README.md).

use iicp_proto::lifecycle::{Event, EventKind, Step, Tracker, Violation};
use iicp_proto::message::{Body, ErrorMap, Lifecycle, Response};
use serde_json::Value;

const FIXTURE: &str = include_str!("data/service-profiles-v1.json");

fn vectors() -> Vec<Value> {
    let v: Value = serde_json::from_str(FIXTURE).expect("fixture");
    v["lifecycle_vectors"].as_array().expect("vectors").clone()
}

fn vector(id: &str) -> Value {
    vectors()
        .into_iter()
        .find(|v| v["id"] == id)
        .unwrap_or_else(|| panic!("{id} missing"))
}

/// What a run of the validator over a vector's events gave.
#[derive(Debug, Default)]
struct Run {
    steps: Vec<Step>,
    error: Option<(usize, Violation)>,
    finish: Option<Result<(), Violation>>,
    text: String,
    tokens: Option<u64>,
    terminal: Option<EventKind>,
}

fn text_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn run_events(v: &Value) -> Run {
    let task = v["input"]["task_id"].as_str().expect("task id");
    let mut t = Tracker::new(task);
    let mut run = Run::default();
    for (i, e) in v["events"].as_array().expect("events").iter().enumerate() {
        let kind = EventKind::parse(e["event"].as_str().expect("event")).expect("known");
        let mut ev = Event::new(task, e["sequence"].as_u64().expect("seq"), kind);
        ev.is_final = e["is_final"].as_bool().expect("is_final");
        ev.result = e.get("result").cloned().map(Into::into);
        ev.tokens_used = e.get("tokens_used").and_then(Value::as_u64);
        match t.accept_event(&ev) {
            Ok(step) => {
                if matches!(step, Step::Accept(_)) {
                    run.text.push_str(
                        ev.result
                            .as_ref()
                            .and_then(iicp_proto::result::ResultJson::as_value)
                            .map_or("", text_of),
                    );
                    run.tokens = ev.tokens_used.or(run.tokens);
                }
                run.steps.push(step);
            }
            Err(err) => {
                run.error = Some((i, err));
                break;
            }
        }
    }
    run.terminal = t.terminal();
    run.finish = Some(t.finish());
    run
}

fn frame(f: &Value) -> Response {
    let env = &f["lifecycle"];
    Response {
        session_id: f["session_id"].as_str().map(str::to_owned),
        call_id: f["call_id"].as_str().map(str::to_owned),
        status: f["status"].as_str().map(str::to_owned),
        is_final: f["is_final"].as_bool(),
        result: f.get("result").map(Body::cbor),
        error: f.get("error").map(|e| ErrorMap {
            code: e["code"].as_str().map(str::to_owned),
            message: e["message"].as_str().map(str::to_owned),
        }),
        lifecycle: Some(Lifecycle {
            task_id: env["task_id"].as_str().map(str::to_owned),
            sequence: env["sequence"].as_u64(),
            event: env["event"].as_str().map(str::to_owned),
            is_final: env["is_final"].as_bool(),
            receipt: None,
        }),
        ..Response::default()
    }
}

fn run_native(v: &Value) -> Run {
    let input = &v["input"];
    let mut t = Tracker::native(
        input["task_id"].as_str().expect("task"),
        input["call_id"].as_str(),
        input["session_id"].as_str(),
    );
    let mut run = Run::default();
    for (i, f) in v["native_frames"]
        .as_array()
        .expect("frames")
        .iter()
        .enumerate()
    {
        let resp = frame(f);
        match t.accept_response(&resp) {
            Ok(step) => {
                if matches!(step, Step::Accept(_)) {
                    let chunk = resp
                        .result
                        .as_ref()
                        .and_then(|b| b.to_json(iicp_proto::message::Prefer::Cbor).ok());
                    run.text.push_str(chunk.as_ref().map_or("", text_of));
                }
                run.steps.push(step);
            }
            Err(err) => {
                run.error = Some((i, err));
                break;
            }
        }
    }
    run.terminal = t.terminal();
    run.finish = Some(t.finish());
    run
}

fn accepted(kinds: &[EventKind]) -> Vec<Step> {
    kinds.iter().map(|k| Step::Accept(*k)).collect()
}

use EventKind::*;

#[test]
fn the_fixture_is_the_vendored_one() {
    let v: Value = serde_json::from_str(FIXTURE).expect("fixture");
    assert_eq!(v["fixture_version"], "1.3.0-draft");
    assert_eq!(vectors().len(), 23);
    assert_eq!(v["profiles"][0], iicp_proto::lifecycle::PROFILE);
}

#[test]
fn lifecycle_01_accepted_then_completed() {
    let r = run_events(&vector("SERVICE-LIFECYCLE-01"));
    assert_eq!(r.error, None);
    assert_eq!(r.steps, accepted(&[Accepted, Completed]));
    assert_eq!(r.finish, Some(Ok(())));
}

#[test]
fn lifecycle_02_chunks_concatenate_in_order_and_terminal_tokens_count() {
    let r = run_events(&vector("SERVICE-LIFECYCLE-02"));
    assert_eq!(r.error, None);
    assert_eq!(r.steps, accepted(&[Accepted, Partial, Partial, Completed]));
    assert_eq!(r.text, "hello!");
    assert_eq!(r.tokens, Some(3));
    assert_eq!(r.terminal, Some(Completed));
}

#[test]
fn lifecycle_03_duplicate_is_discarded() {
    let r = run_events(&vector("SERVICE-LIFECYCLE-03"));
    assert_eq!(r.error, None);
    assert_eq!(
        r.steps,
        vec![
            Step::Accept(Accepted),
            Step::Accept(Partial),
            Step::Discard,
            Step::Accept(Completed)
        ]
    );
    assert_eq!(r.finish, Some(Ok(())));
}

#[test]
fn lifecycle_04_05_06_non_success_terminals() {
    for (id, terminal) in [
        ("SERVICE-LIFECYCLE-04", Rejected),
        ("SERVICE-LIFECYCLE-05", Cancelled),
        ("SERVICE-LIFECYCLE-06", TimedOut),
    ] {
        let r = run_events(&vector(id));
        assert_eq!(r.error, None, "{id}");
        assert_eq!(r.terminal, Some(terminal), "{id}");
        assert_eq!(r.finish, Some(Ok(())), "{id}");
        assert!(!r.steps.contains(&Step::Accept(Completed)), "{id}");
    }
}

#[test]
fn lifecycle_09_failure_after_partial_is_terminal_failure() {
    let r = run_events(&vector("SERVICE-LIFECYCLE-09"));
    assert_eq!(r.error, None);
    assert_eq!(r.terminal, Some(Failed));
    assert_eq!(r.text, "incomplete", "kept only as evidence");
}

#[test]
fn lifecycle_10_partial_after_terminal_is_rejected() {
    let r = run_events(&vector("SERVICE-LIFECYCLE-10"));
    assert_eq!(r.error, Some((2, Violation::AfterTerminal)));
}

#[test]
fn lifecycle_11_second_terminal_is_rejected() {
    let r = run_events(&vector("SERVICE-LIFECYCLE-11"));
    assert_eq!(r.error, Some((2, Violation::AfterTerminal)));
    assert_eq!(r.terminal, Some(Completed));
}

#[test]
fn lifecycle_12_close_without_terminal_is_ambiguous_failure() {
    let v = vector("SERVICE-LIFECYCLE-12");
    assert_eq!(v["input"]["stream_closed"], true);
    let r = run_events(&v);
    assert_eq!(r.error, None);
    assert_eq!(r.finish, Some(Err(Violation::MissingTerminal)));
    assert_eq!(r.terminal, None);
}

#[test]
fn lifecycle_13_partial_marked_final_is_invalid() {
    let r = run_events(&vector("SERVICE-LIFECYCLE-13"));
    assert_eq!(r.error, Some((1, Violation::PartialMarkedFinal)));
}

#[test]
fn lifecycle_14_native_correlated_stream() {
    let r = run_native(&vector("SERVICE-LIFECYCLE-14"));
    assert_eq!(r.error, None);
    assert_eq!(r.steps, accepted(&[Partial, Completed]));
    assert_eq!(r.text, "hello");
    assert_eq!(r.finish, Some(Ok(())));
}

#[test]
fn lifecycle_15_16_native_failure_and_timeout_after_partial() {
    for (id, terminal) in [
        ("SERVICE-LIFECYCLE-15", Failed),
        ("SERVICE-LIFECYCLE-16", TimedOut),
    ] {
        let r = run_native(&vector(id));
        assert_eq!(r.error, None, "{id}");
        assert_eq!(r.terminal, Some(terminal), "{id}");
        assert_eq!(r.text, "incomplete", "{id}");
    }
}

#[test]
fn lifecycle_17_native_call_id_drift() {
    let r = run_native(&vector("SERVICE-LIFECYCLE-17"));
    assert_eq!(r.error, Some((1, Violation::CallIdDrift)));
    assert_eq!(r.terminal, None, "the terminal output is not accepted");
}

#[test]
fn lifecycle_18_native_sequence_gap() {
    let r = run_native(&vector("SERVICE-LIFECYCLE-18"));
    assert_eq!(
        r.error,
        Some((
            1,
            Violation::SequenceGap {
                expected: 1,
                got: 2
            }
        ))
    );
}

#[test]
fn lifecycle_19_native_finality_disagreement() {
    let r = run_native(&vector("SERVICE-LIFECYCLE-19"));
    assert_eq!(r.error, Some((0, Violation::FinalityDisagreement)));
}

#[test]
fn lifecycle_20_native_response_after_terminal() {
    let r = run_native(&vector("SERVICE-LIFECYCLE-20"));
    assert_eq!(r.error, Some((1, Violation::AfterTerminal)));
}

#[test]
fn vectors_07_08_21_22_23_are_server_rules() {
    // no events to validate on the receiver: the node's tests cover them
    for id in [
        "SERVICE-LIFECYCLE-07",
        "SERVICE-LIFECYCLE-08",
        "SERVICE-LIFECYCLE-21",
        "SERVICE-LIFECYCLE-22",
        "SERVICE-LIFECYCLE-23",
    ] {
        let v = vector(id);
        assert!(
            v.get("events").is_none() && v.get("native_frames").is_none(),
            "{id}"
        );
    }
}

#[test]
fn contradictions_beyond_the_vectors() {
    // status against event
    let mut r = frame(
        &serde_json::json!({"session_id": "s", "call_id": "c", "status": "success", "is_final": false,
        "lifecycle": {"task_id": "t", "sequence": 0, "event": "partial", "is_final": false}}),
    );
    let mut t = Tracker::native("t", Some("c"), Some("s"));
    assert!(matches!(
        t.accept_response(&r),
        Err(Violation::StatusEventDisagreement { .. })
    ));
    // session drift, task drift
    r.status = Some("partial".into());
    r.session_id = Some("other".into());
    assert_eq!(
        Tracker::native("t", Some("c"), Some("s")).accept_response(&r),
        Err(Violation::SessionIdDrift)
    );
    r.session_id = Some("s".into());
    assert_eq!(
        Tracker::native("u", Some("c"), Some("s")).accept_response(&r),
        Err(Violation::TaskIdDrift)
    );
    // a first event above 0 is a gap; a resumed tracker starts after its point
    r.lifecycle.as_mut().expect("env").sequence = Some(4);
    assert_eq!(
        Tracker::native("t", Some("c"), Some("s")).accept_response(&r),
        Err(Violation::SequenceGap {
            expected: 0,
            got: 4
        })
    );
    let mut resumed = Tracker::native("t", Some("c"), Some("s")).resumed_after(3);
    assert_eq!(resumed.accept_response(&r), Ok(Step::Accept(Partial)));
    // no envelope
    r.lifecycle = None;
    assert!(matches!(
        t.accept_response(&r),
        Err(Violation::Malformed(_))
    ));
    // an encrypted HTTP event is judged by its event
    let mut e = Event::new("t", 0, Partial);
    e.status = "encrypted".into();
    assert_eq!(
        Tracker::new("t").accept_event(&e),
        Ok(Step::Accept(Partial))
    );
    assert_eq!(Violation::CallIdDrift.code(), "call_id_drift");
}
