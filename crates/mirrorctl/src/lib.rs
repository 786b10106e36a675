//! `mirrorctl` as a library: the parts that integration tests and benches
//! call directly (the binary in `main.rs` is the operator's interface).

pub mod consistency;
