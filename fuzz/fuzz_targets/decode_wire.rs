//! Fuzz the transport-neutral decoder, including the CloudEvents AMQP binary
//! binding: arbitrary content types, properties of every value kind, bodies.
#![no_main]
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use mirror_schema::{decode_wire, WireMessage, WireValue};

#[derive(Debug, Arbitrary)]
enum Value {
    String(String),
    Bool(bool),
    Int(i64),
    Millis(i64),
    Uuid([u8; 16]),
    Binary(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
struct Input {
    content_type: Option<String>,
    /// Property names get a CloudEvents prefix when the flag is set, so the binary path is reached.
    properties: Vec<(bool, String, Value)>,
    body: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let properties = input
        .properties
        .into_iter()
        .map(|(prefixed, name, v)| {
            let name = if prefixed {
                format!("cloudEvents_{name}")
            } else {
                name
            };
            let v = match v {
                Value::String(s) => WireValue::String(s),
                Value::Bool(b) => WireValue::Bool(b),
                Value::Int(i) => WireValue::Int(i),
                Value::Millis(ms) => match chrono::DateTime::from_timestamp_millis(ms) {
                    Some(t) => WireValue::Timestamp(t),
                    None => WireValue::Int(ms),
                },
                Value::Uuid(b) => WireValue::Uuid(uuid::Uuid::from_bytes(b)),
                Value::Binary(b) => WireValue::Binary(b),
            };
            (name, v)
        })
        .collect();
    let message = WireMessage {
        content_type: input.content_type,
        properties,
        body: input.body,
    };
    let _ = decode_wire(&message);
});
