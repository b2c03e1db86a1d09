//! A server session fed arbitrary input in arbitrary chunks never panics and never
//! consumes more than it was given.
#![no_main]

use std::time::{Duration, Instant};

use iicp_proto::session::{Config, Session};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut s = Session::new(Config::server(), t0);
    let mut buf = Vec::new();
    for (i, chunk) in data.chunks(7).enumerate() {
        buf.extend_from_slice(chunk);
        let now = t0 + Duration::from_millis(i as u64 * 100);
        let used = s.handle_input(&buf, now);
        assert!(used <= buf.len());
        buf.drain(..used);
        while s.poll_event().is_some() {}
        s.handle_timeout(now);
        let mut out = Vec::new();
        s.take_transmit(&mut out);
    }
});
