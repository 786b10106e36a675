//! The one error type of the contract: every way an event can fail to be one.

/// Why bytes (or a CloudEvent) are not a valid realtime-mirror event.
///
/// Every variant names the attribute or field that was wrong, so the message
/// can go straight into a dead-letter reason. All of them are permanent: the
/// same input will never decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("event is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed event: {0}")]
    Malformed(String),
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    #[error("missing attribute or field `{0}`")]
    Missing(&'static str),
    #[error("invalid `{field}`: {reason}")]
    Invalid { field: String, reason: String },
    #[error("`{field}` is `{found}` but the subject says `{expected}`")]
    Mismatch {
        field: &'static str,
        found: String,
        expected: String,
    },
    #[error(
        "id `{found}` is not the deterministic id `{expected}` of this type, subject and time"
    )]
    WrongId { found: String, expected: String },
}

impl DecodeError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        DecodeError::Invalid {
            field: field.into(),
            reason: reason.to_string(),
        }
    }

    /// A short, stable, machine-friendly name of the error class, for metrics
    /// labels and dead-letter reasons (`DeadLetterReason` on Service Bus).
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::UnknownType(_) => "unknown_type",
            DecodeError::Missing(_) => "missing_field",
            DecodeError::Invalid { .. } => "invalid_field",
            DecodeError::Mismatch { .. } => "id_mismatch",
            DecodeError::WrongId { .. } => "wrong_id",
        }
    }
}
