//! Fuzz the structured-mode JSON decoder: any bytes either decode to a valid
//! event that re-encodes and decodes to itself, or fail with an error; never a
//! panic. The direct path and the reference decoder agree on every input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = mirror_schema::decode_structured(data);
    let reference = mirror_schema::decode_structured_reference(data);
    match (&decoded, &reference) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b);
            assert_eq!(a.published_at(), b.published_at());
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("direct {decoded:?}, reference {reference:?}"),
    }
    if let Ok(event) = decoded {
        let again = mirror_schema::decode_structured(&event.to_structured_json())
            .expect("re-encoded event decodes");
        assert_eq!(again, event);
    }
});
