//! The Cart Status API's JSON answers, matched back to requested carts.
#![no_main]

use cartwatch::cart_id::CartId;
use cartwatch::provider::imaterialise::{match_reply, wire};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(reply) = wire::decode_json(data) {
        let requested = [CartId::parse("921a2046-66a5-4c5f-b9a6-4bc646fa5e5a").unwrap()];
        let matched = match_reply(&requested, reply);
        assert_eq!(matched.reports.len(), 1);
    }
});
