//! The Cart Status API's JSON answers, matched back to requested carts. The reading without a
//! JSON tree must agree with the tree's whenever it accepts an answer.
#![no_main]

use cartwatch::cart_id::CartId;
use cartwatch::provider::imaterialise::{match_reply, wire};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = wire::decode_json(data);
    assert_eq!(decoded, wire::decode_json_tree(data));
    if let Ok(reply) = decoded {
        let requested = [CartId::parse("921a2046-66a5-4c5f-b9a6-4bc646fa5e5a").unwrap()];
        let matched = match_reply(&requested, reply);
        assert_eq!(matched.reports.len(), 1);
    }
});
