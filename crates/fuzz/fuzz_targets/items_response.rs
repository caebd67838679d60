//! The Add/Remove Cart Item API's answers, JSON and XML, with their exact decimals.
#![no_main]

use cartwatch::provider::imaterialise::items;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = items::decode_json(data);
    let _ = items::decode_xml(data);
});
