//! The objects of the contract, in their JSON shape (camelCase, RFC 3339 UTC times).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// A message as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub project_id: Uuid,
    pub sender_id: Uuid,
    // The pattern says what `validate_body` checks: no control character but tab, line feed and
    // carriage return, and one character that is not white space.
    #[schema(
        min_length = 1,
        max_length = 5000,
        pattern = "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*[^\\u0000-\\u0020\\u007F-\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000][^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*$"
    )]
    pub body: String,
    /// The message's `PARLEY_CHAT` stream sequence: increases in the order sends were accepted.
    #[schema(minimum = 1)]
    pub seq: i64,
    #[serde(with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    /// The sender's idempotency key, null when none was given.
    #[schema(required = true, max_length = 64, pattern = "^[A-Za-z0-9_-]+$")]
    pub client_msg_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Client,
    Provider,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Provider => "provider",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConversationStatus {
    Active,
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Participant {
    pub user_id: Uuid,
    pub role: Role,
    pub display_name: String,
    pub last_read_seq: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastMessage {
    pub id: Uuid,
    pub sender_id: Uuid,
    /// The body cut to at most 120 characters.
    #[schema(max_length = 120)]
    pub preview: String,
    pub seq: i64,
    #[serde(with = "rfc3339")]
    pub created_at: DateTime<Utc>,
}

/// A conversation as one of its participants sees it (`unreadCount` is the caller's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Conversation {
    pub id: Uuid,
    pub project_id: Uuid,
    pub project_title: String,
    pub status: ConversationStatus,
    pub participants: Vec<Participant>,
    /// The latest message, null in a conversation without one.
    #[schema(required = true)]
    pub last_message: Option<LastMessage>,
    pub unread_count: i64,
    #[serde(with = "rfc3339")]
    pub updated_at: DateTime<Utc>,
    /// The conversation's transcript as of the read: a witness every client holds.
    pub transcript: TranscriptSummary,
}

/// A transcript's size (entries chained) and head (`hash(size-1)`, 64 lowercase hex digits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TranscriptSummary {
    #[schema(minimum = 0)]
    pub size: i64,
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub head: String,
}

/// RFC 3339 in UTC with millisecond precision and a `Z`, the one time format on the wire.
pub mod rfc3339 {
    use std::fmt;

    use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
    use serde::{Deserializer, Serializer, de};

    pub fn format(t: &DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    /// Written from a buffer on the stack: a timestamp is in every message sent.
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        let mut buffer = [0; MILLIS_Z_LEN];
        match write_millis_z(t, &mut buffer) {
            Some(formatted) => s.serialize_str(formatted),
            None => s.serialize_str(&format(t)),
        }
    }

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    const MILLIS_Z_LEN: usize = 24;

    /// [`format`] into `buffer`, for years of four digits outside leap seconds; `None` for the
    /// rest, which [`format`] spells its own way.
    fn write_millis_z<'b>(t: &DateTime<Utc>, buffer: &'b mut [u8; MILLIS_Z_LEN]) -> Option<&'b str> {
        let year = u32::try_from(t.year()).ok().filter(|year| *year <= 9999)?;
        let nanos = t.nanosecond();
        if nanos >= 1_000_000_000 {
            return None;
        }
        let fields = [
            (0, 4, year),
            (5, 2, t.month()),
            (8, 2, t.day()),
            (11, 2, t.hour()),
            (14, 2, t.minute()),
            (17, 2, t.second()),
            (20, 3, nanos / 1_000_000),
        ];
        for (at, width, mut value) in fields {
            for digit in buffer[at..at + width].iter_mut().rev() {
                *digit = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
        for (at, separator) in [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
            (23, b'Z'),
        ] {
            buffer[at] = separator;
        }
        std::str::from_utf8(buffer).ok()
    }

    /// Parsed from the input in place when it can be borrowed.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        d.deserialize_str(Rfc3339Visitor)
    }

    struct Rfc3339Visitor;

    impl de::Visitor<'_> for Rfc3339Visitor {
        type Value = DateTime<Utc>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an RFC 3339 timestamp")
        }

        fn visit_str<E: de::Error>(self, raw: &str) -> Result<Self::Value, E> {
            DateTime::parse_from_rfc3339(raw)
                .map(|t| t.with_timezone(&Utc))
                .map_err(E::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Datelike, SecondsFormat, TimeZone, Utc};
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Stamped {
        #[serde(with = "super::rfc3339")]
        at: DateTime<Utc>,
    }

    fn instants() -> Vec<DateTime<Utc>> {
        vec![
            Utc.with_ymd_and_hms(2026, 11, 25, 10, 42, 44).unwrap(),
            Utc.timestamp_millis_opt(1_764_067_364_007).unwrap(),
            Utc.timestamp_millis_opt(1_764_067_364_999).unwrap(),
            Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-1, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(812, 3, 4, 5, 6, 7).unwrap(),
            chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
                .and_then(|day| day.and_hms_milli_opt(23, 59, 59, 1_250))
                .unwrap()
                .and_utc(),
        ]
    }

    #[test]
    fn timestamps_serialize_as_rfc3339_with_milliseconds_and_z() {
        for at in instants() {
            let json = serde_json::to_string(&Stamped { at }).unwrap();
            let expected = format!(r#"{{"at":"{}"}}"#, at.to_rfc3339_opts(SecondsFormat::Millis, true));
            assert_eq!(json, expected);
        }
    }

    #[test]
    fn timestamps_deserialize_from_borrowed_and_owned_strings_with_any_offset() {
        // RFC 3339 has four-digit years only.
        for at in instants().into_iter().filter(|at| (0..=9999).contains(&at.year())) {
            let json = serde_json::to_string(&Stamped { at }).unwrap();
            assert_eq!(serde_json::from_str::<Stamped>(&json).unwrap().at, at);
            let value: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(serde_json::from_value::<Stamped>(value).unwrap().at, at);
        }
        let offset: Stamped = serde_json::from_str(r#"{"at":"2026-11-25T12:42:44.5+02:00"}"#).unwrap();
        let expected = Utc.with_ymd_and_hms(2026, 11, 25, 10, 42, 44).unwrap() + chrono::TimeDelta::milliseconds(500);
        assert_eq!(offset.at, expected);
        // An escaped string cannot be borrowed; it still parses.
        let escaped: Stamped = serde_json::from_str(r#"{"at":"2026-11-25T10:42:44\u002E500Z"}"#).unwrap();
        assert_eq!(escaped.at, offset.at);
        assert!(serde_json::from_str::<Stamped>(r#"{"at":"yesterday"}"#).is_err());
        assert!(serde_json::from_str::<Stamped>(r#"{"at":17}"#).is_err());
    }
}
