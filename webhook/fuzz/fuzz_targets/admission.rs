//! Raw bytes → review parsing → mutation → patch applied → reinvocation adds nothing.
//! See `rolebridge_webhook::admission::fuzzing` for the input format and the properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rolebridge_webhook::admission::fuzzing::check(data);
});
