//! Titelive's envelope and the cart and order objects inside it.
#![no_main]

use cartwatch::provider::titelive;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = titelive::decode_envelope(data)
        && let Some(object) = &envelope.object
    {
        let _ = titelive::cart_of(object);
        let _ = titelive::order_of(object);
    }
});
