//! Azure Service Bus adapter (in progress).
