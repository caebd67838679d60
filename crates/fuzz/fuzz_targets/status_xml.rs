//! The Cart Status API's XML answers, through the tolerant element tree.
#![no_main]

use cartwatch::provider::imaterialise::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wire::decode_xml(data);
    let _ = cartwatch::xml_tree::parse(data);
});
