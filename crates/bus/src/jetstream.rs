//! NATS JetStream adapter (in progress).
