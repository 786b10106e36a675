#[allow(dead_code)] // until main.rs uses the loader (`mirrorctl seed`)
mod seed;

fn main() {}
