//! What an agent sends on its stream, decoded as the gateway decodes it (protobuf), and
//! the server's messages as an agent decodes them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = stella_proto::v1::AgentMessage::decode(data) {
        let _ = message.encode_to_vec();
    }
    if let Ok(message) = stella_proto::v1::ServerMessage::decode(data) {
        let _ = message.encode_to_vec();
    }
});
