//! Fuzzes the handover message decoder: one received record (no descriptors,
//! no kernel truncation flags) through `wire::decode_record`, exactly the
//! path `Conn::recv` takes once `recvmsg` returned. Every message it accepts
//! must encode and decode back to itself.
//!
//! Seeds: `corpus/handover_msg/` (real encoded messages of every type).
//! A crash found here becomes a case in `handover::msg::tests::
//! fuzz_regressions_decode_without_panicking` (node-agent/src/handover/msg.rs).

#![no_main]

use baton_agent::handover::wire::decode_record;
use baton_agent::handover::Msg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode_record(data, 0, false, false) {
        let bytes = serde_json::to_vec(&msg).expect("an accepted message encodes");
        let back = Msg::decode(&bytes).expect("an accepted message decodes again");
        assert_eq!(back, msg, "round trip changed the message");
    }
});
