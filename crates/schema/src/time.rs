//! Source versions: RFC 3339 UTC timestamps at microsecond precision.
//!
//! The event `time` is the version every guarantee rests on, so it is
//! normalised once here: any RFC 3339 offset is converted to UTC and the value
//! is truncated to whole microseconds (the precision of Firestore, PostgreSQL
//! `timestamptz` and the contract's id formula).

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};

use crate::DecodeError;

/// A point in time at microsecond precision, UTC.
pub type SourceTime = DateTime<Utc>;

/// Parse an RFC 3339 timestamp, normalise to UTC and whole microseconds.
pub fn parse_time(field: &str, value: &str) -> Result<SourceTime, DecodeError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc).trunc_subsecs(6))
        .map_err(|e| {
            DecodeError::invalid(
                field,
                format!(
                    "`{}` is not an RFC 3339 timestamp ({e})",
                    crate::types::truncate(value, 64)
                ),
            )
        })
}

/// The contract's canonical text form: 6 fractional digits and `Z`.
pub fn format_time(t: &SourceTime) -> String {
    t.trunc_subsecs(6)
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Serde adapters for payload timestamps (canonical on output, normalised on input).
pub(crate) mod serde_ts {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SourceTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_time(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SourceTime, D::Error> {
        let s = String::deserialize(d)?;
        parse_time("timestamp", &s).map_err(|_| {
            serde::de::Error::custom(format!(
                "`{}` is not an RFC 3339 timestamp",
                crate::types::truncate(&s, 64)
            ))
        })
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(t: &Option<SourceTime>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_str(&format_time(t)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<SourceTime>, D::Error> {
            match Option::<String>::deserialize(d)? {
                None => Ok(None),
                Some(s) => parse_time("timestamp", &s).map(Some).map_err(|_| {
                    serde::de::Error::custom(format!(
                        "`{}` is not an RFC 3339 timestamp",
                        crate::types::truncate(&s, 64)
                    ))
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_offsets_and_precision() {
        let t = parse_time("time", "2025-10-08T14:34:56.123456789+02:00").unwrap();
        assert_eq!(format_time(&t), "2025-10-08T12:34:56.123456Z");
        let t = parse_time("time", "2025-10-08T12:34:56Z").unwrap();
        assert_eq!(format_time(&t), "2025-10-08T12:34:56.000000Z");
    }

    #[test]
    fn rejects_non_rfc3339() {
        let e = parse_time("time", "2025-10-08 12:34").unwrap_err();
        assert!(e.to_string().starts_with("invalid `time`"), "{e}");
    }
}
