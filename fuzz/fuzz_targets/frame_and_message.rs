//! Frame decoder, CBOR normalisation and message decoder on arbitrary bytes.
#![no_main]

use iicp_proto::frame::{Decoded, Frame, MAX_PAYLOAD};
use iicp_proto::message::{Channel, Message};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(Decoded::Complete { frame, consumed }) = Frame::decode(data, MAX_PAYLOAD) {
        assert!(consumed <= data.len());
        let _ = Message::decode(&frame.header, frame.payload, Channel::Task);
        let _ = Message::decode(&frame.header, frame.payload, Channel::Relay);
    }
    let _ = iicp_proto::cbor::normalize(data);
    let _ = iicp_proto::cbor::to_json(data);
});
