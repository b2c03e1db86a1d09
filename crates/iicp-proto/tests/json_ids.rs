//! Task ids and W3C trace context (PROTOCOL.md §2.1, §2.3, §19 T14).

// Tests may unwrap (DESIGN §3); the workspace lint targets library code.
#![allow(clippy::unwrap_used)]

use iicp_proto::ids::{uuid_v4, IdError, TaskId, TraceParent, MAX_LENIENT_ID_LEN};
use proptest::prelude::*;
use rand_core::{OsRng, RngCore};

/// An RNG that returns only zeros (exercises the all-zero guards).
struct Zeros;

impl RngCore for Zeros {
    fn next_u32(&mut self) -> u32 {
        0
    }
    fn next_u64(&mut self) -> u64 {
        0
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        dest.fill(0);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        dest.fill(0);
        Ok(())
    }
}

#[test]
fn generated_task_ids_are_strict_uuid_v4() {
    for _ in 0..64 {
        let id = TaskId::generate(&mut OsRng);
        assert_eq!(id.as_str().len(), 36);
        assert!(id.is_uuid_v4(), "{id}");
        assert_eq!(TaskId::parse(id.as_str()).unwrap(), id);
        assert_eq!(id.as_uuid().unwrap().get_version_num(), 4);
    }
    let zero = TaskId::generate(&mut Zeros);
    assert!(zero.is_uuid_v4(), "{zero}");
    assert_eq!(uuid_v4(&mut Zeros).get_version_num(), 4);
}

#[test]
fn strict_task_id_parse() {
    let good = [
        "550e8400-e29b-41d4-a716-446655440000",
        "f47ac10b-58cc-4372-a567-0e02b2c3d479",
        "9402bce3-2584-4dae-8628-5e9fb27641b7",
    ];
    for s in good {
        assert!(TaskId::parse(s).is_ok(), "{s}");
        assert!(s.parse::<TaskId>().is_ok(), "{s}");
    }
    let bad = [
        ("", IdError::NotUuid),
        ("t-rs-1", IdError::NotUuid),
        ("550E8400-E29B-41D4-A716-446655440000", IdError::NotUuid),
        ("550e8400e29b41d4a716446655440000", IdError::NotUuid),
        ("{550e8400-e29b-41d4-a716-446655440000}", IdError::NotUuid),
        ("550e8400-e29b-41d4-a716-44665544000g", IdError::NotUuid),
        ("550e8400-e29b-11d4-a716-446655440000", IdError::NotUuidV4),
        ("550e8400-e29b-41d4-c716-446655440000", IdError::NotUuidV4),
    ];
    for (s, err) in bad {
        assert_eq!(TaskId::parse(s).unwrap_err(), err, "{s}");
    }
}

#[test]
fn lenient_task_ids_for_inbound_peers() {
    for s in [
        "call-1",
        "t-rs-1",
        "discover-1",
        "550E8400-E29B-41D4-A716-446655440000",
    ] {
        let id = TaskId::parse_lenient(s).unwrap();
        assert_eq!(id.as_str(), s);
        assert!(!id.is_uuid_v4());
        // serde is lenient too, so inbound bodies with such ids still parse.
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<TaskId>(&json).unwrap(), id);
    }
    assert_eq!(TaskId::parse_lenient("").unwrap_err(), IdError::Empty);
    assert_eq!(
        TaskId::parse_lenient("a\nb").unwrap_err(),
        IdError::ControlCharacter
    );
    let long = "a".repeat(MAX_LENIENT_ID_LEN + 1);
    assert!(matches!(
        TaskId::parse_lenient(&long).unwrap_err(),
        IdError::TooLong { .. }
    ));
    assert!(serde_json::from_str::<TaskId>("\"\"").is_err());
    assert!(serde_json::from_str::<TaskId>("17").is_err());
}

#[test]
fn traceparent_known_values() {
    let s = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let tp: TraceParent = s.parse().unwrap();
    assert_eq!(tp.to_string(), s);
    assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(tp.parent_id_hex(), "00f067aa0ba902b7");
    assert_eq!(tp.trace_id()[0], 0x4b);
    assert_eq!(
        tp.parent_id(),
        [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
    );
    assert_eq!(tp.flags(), 1);
    assert!(tp.sampled());
    assert_eq!(tp.version(), 0);
    let unsampled: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        .parse()
        .unwrap();
    assert!(!unsampled.sampled());
    // Whitespace around a header value is tolerated.
    assert_eq!(TraceParent::parse(&format!("  {s}\t")).unwrap(), tp);
    // A future version may carry more fields; we re-emit version 00.
    let future = TraceParent::parse(
        "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds",
    )
    .unwrap();
    assert_eq!(future.version(), 0xcc);
    assert_eq!(future.to_string(), s);
}

#[test]
fn traceparent_rejections() {
    let cases = [
        ("", IdError::TraceParentFormat),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            IdError::TraceParentFormat,
        ),
        (
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            IdError::TraceParentFormat,
        ),
        (
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            IdError::TraceParentVersion,
        ),
        (
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            IdError::ZeroTraceId,
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            IdError::ZeroParentId,
        ),
        (
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            IdError::TraceParentHex { field: "trace-id" },
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
            IdError::TraceParentHex { field: "parent-id" },
        ),
        (
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            IdError::TraceParentHex { field: "version" },
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            IdError::TraceParentHex { field: "flags" },
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            IdError::TraceParentFormat,
        ),
        (
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            IdError::TraceParentFormat,
        ),
    ];
    for (s, err) in cases {
        assert_eq!(TraceParent::parse(s).unwrap_err(), err, "{s:?}");
    }
    assert!(TraceParent::from_parts([0; 16], [1; 8], 1).is_err());
    assert!(TraceParent::from_parts([1; 16], [0; 8], 1).is_err());
}

#[test]
fn traceparent_generate_and_child() {
    let root = TraceParent::generate(&mut OsRng);
    assert!(root.sampled());
    assert_eq!(TraceParent::parse(&root.to_string()).unwrap(), root);
    let child = root.child(&mut OsRng);
    assert_eq!(child.trace_id(), root.trace_id());
    assert_eq!(child.flags(), root.flags());
    assert_ne!(child.parent_id(), root.parent_id());
    // An all-zero RNG still yields a valid context.
    let z = TraceParent::generate(&mut Zeros);
    assert!(TraceParent::parse(&z.to_string()).is_ok());
    let zc = z.child(&mut Zeros);
    assert!(TraceParent::parse(&zc.to_string()).is_ok());
    // serde as a string
    let json = serde_json::to_string(&root).unwrap();
    assert_eq!(json, format!("\"{root}\""));
    assert_eq!(serde_json::from_str::<TraceParent>(&json).unwrap(), root);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn traceparent_round_trip(trace in prop::array::uniform16(any::<u8>()), parent in prop::array::uniform8(any::<u8>()), flags in any::<u8>()) {
        match TraceParent::from_parts(trace, parent, flags) {
            Ok(tp) => {
                let text = tp.to_string();
                prop_assert_eq!(text.len(), 55);
                let back = TraceParent::parse(&text).unwrap();
                prop_assert_eq!(back, tp);
                prop_assert_eq!(back.trace_id_hex(), hex::encode(trace));
            }
            Err(_) => prop_assert!(trace == [0; 16] || parent == [0; 8]),
        }
    }

    #[test]
    fn traceparent_parse_never_panics(s in "\\PC{0,70}") {
        let _ = TraceParent::parse(&s);
    }

    #[test]
    fn task_id_strict_parse_never_panics(s in "\\PC{0,40}") {
        if let Ok(id) = TaskId::parse(&s) {
            prop_assert!(id.is_uuid_v4());
            prop_assert!(uuid::Uuid::try_parse(&s).is_ok());
        }
        let _ = TaskId::parse_lenient(&s);
    }

    #[test]
    fn uuid_crate_agrees_on_generated_ids(bytes in prop::array::uniform16(any::<u8>())) {
        let u = uuid::Builder::from_random_bytes(bytes).into_uuid();
        let id = TaskId::from(u);
        prop_assert!(id.is_uuid_v4());
        prop_assert_eq!(TaskId::parse(&u.hyphenated().to_string()).unwrap(), id);
    }
}
