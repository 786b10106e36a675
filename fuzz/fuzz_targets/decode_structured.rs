//! Fuzz the structured-mode JSON decoder: any bytes either decode to a valid
//! event that re-encodes and decodes to itself, or fail with an error; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = mirror_schema::decode_structured(data) {
        let again = mirror_schema::decode_structured(&event.to_structured_json())
            .expect("re-encoded event decodes");
        assert_eq!(again, event);
    }
});
