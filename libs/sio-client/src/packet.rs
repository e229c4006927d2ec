//! Wire format: Engine.IO v4 text packets and the Socket.IO v5 packets they carry.
//!
//! Kept free of any I/O so that encoding and parsing can be unit tested without a
//! server. Over a websocket, one Engine.IO packet is one text frame: a single type
//! digit followed by its payload. A Socket.IO packet travels as the payload of an
//! Engine.IO `message` (`4`), which is why Socket.IO events look like `42[...]` on
//! the wire.
//!
//! Socket.IO packet layout (text encoding, see the `socket.io-protocol` v5 spec):
//!
//! ```text
//! <type>[<attachments>-][<namespace>,][<ack id>][<JSON payload>]
//! ```
//!
//! The namespace is only present when it is not the default `/`, and the
//! attachment count only for the binary types (5 and 6).

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

/// An Engine.IO v4 packet, borrowing its payload from the received frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EioPacket<'a> {
    /// `0{...}`: handshake data sent by the server right after the websocket opens.
    Open(&'a str),
    /// `1`: the server closes the Engine.IO session.
    Close,
    /// `2[payload]`: heartbeat from the server; must be answered with `3[payload]`.
    Ping(&'a str),
    /// `3[payload]`.
    Pong(&'a str),
    /// `4<socket.io packet>`.
    Message(&'a str),
    /// `5`: transport upgrade (not used on a websocket-only connection).
    Upgrade,
    /// `6`: no-op.
    Noop,
}

pub(crate) fn parse_eio(text: &str) -> Result<EioPacket<'_>, String> {
    let mut chars = text.chars();
    let kind = chars.next().ok_or_else(|| "empty Engine.IO packet".to_owned())?;
    let payload = chars.as_str();
    Ok(match kind {
        '0' => EioPacket::Open(payload),
        '1' => EioPacket::Close,
        '2' => EioPacket::Ping(payload),
        '3' => EioPacket::Pong(payload),
        '4' => EioPacket::Message(payload),
        '5' => EioPacket::Upgrade,
        '6' => EioPacket::Noop,
        _ => return Err(format!("unknown Engine.IO packet type in {text:?}")),
    })
}

/// The parts of the Engine.IO handshake (`0{...}`) this client uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OpenInfo {
    pub sid: String,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
}

pub(crate) fn parse_open(payload: &str) -> Result<OpenInfo, String> {
    let value: Value =
        serde_json::from_str(payload).map_err(|e| format!("invalid Engine.IO open payload {payload:?}: {e}"))?;
    let field_ms = |name: &str| {
        value
            .get(name)
            .and_then(Value::as_u64)
            .map(Duration::from_millis)
            .ok_or_else(|| format!("Engine.IO open payload without numeric {name:?}: {payload}"))
    };
    let sid = value
        .get("sid")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("Engine.IO open payload without \"sid\": {payload}"))?
        .to_owned();
    Ok(OpenInfo {
        sid,
        ping_interval: field_ms("pingInterval")?,
        ping_timeout: field_ms("pingTimeout")?,
    })
}

/// Socket.IO v5 packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SioKind {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

/// A parsed Socket.IO packet (the payload of an Engine.IO `4` packet).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SioPacket<'a> {
    pub kind: SioKind,
    /// Number of binary attachments announced by a binary packet (5/6).
    pub attachments: Option<u32>,
    /// `/` when the packet carries no explicit namespace.
    pub namespace: &'a str,
    pub ack_id: Option<u64>,
    pub data: Option<Value>,
}

pub(crate) fn parse_sio(text: &str) -> Result<SioPacket<'_>, String> {
    let kind = match text.as_bytes().first() {
        Some(b'0') => SioKind::Connect,
        Some(b'1') => SioKind::Disconnect,
        Some(b'2') => SioKind::Event,
        Some(b'3') => SioKind::Ack,
        Some(b'4') => SioKind::ConnectError,
        Some(b'5') => SioKind::BinaryEvent,
        Some(b'6') => SioKind::BinaryAck,
        _ => return Err(format!("unknown Socket.IO packet type in {text:?}")),
    };
    // The first byte is an ASCII digit, so slicing at 1 is on a char boundary.
    let mut rest = &text[1..];

    let attachments = if matches!(kind, SioKind::BinaryEvent | SioKind::BinaryAck) {
        let (count, after) = rest
            .split_once('-')
            .ok_or_else(|| format!("binary Socket.IO packet without attachment count: {text:?}"))?;
        rest = after;
        Some(
            count
                .parse::<u32>()
                .map_err(|_| format!("invalid attachment count in {text:?}"))?,
        )
    } else {
        None
    };

    // Like the reference parser: a namespace runs up to the first ',' (or the end).
    let namespace = if rest.starts_with('/') {
        match rest.split_once(',') {
            Some((ns, after)) => {
                rest = after;
                ns
            }
            None => std::mem::take(&mut rest),
        }
    } else {
        "/"
    };

    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let ack_id = if digits > 0 {
        let id = rest[..digits]
            .parse::<u64>()
            .map_err(|_| format!("ack id out of range in {text:?}"))?;
        rest = &rest[digits..];
        Some(id)
    } else {
        None
    };

    let data = if rest.is_empty() {
        None
    } else {
        Some(serde_json::from_str(rest).map_err(|e| format!("invalid JSON in Socket.IO packet {text:?}: {e}"))?)
    };

    Ok(SioPacket {
        kind,
        attachments,
        namespace,
        ack_id,
        data,
    })
}

/// Splits the payload of an EVENT packet into its name and arguments.
pub(crate) fn event_parts(data: Option<Value>) -> Result<(String, Vec<Value>), String> {
    let Some(Value::Array(items)) = data else {
        return Err(format!("event payload is not a JSON array: {data:?}"));
    };
    let mut items = items.into_iter();
    match items.next() {
        Some(Value::String(name)) => Ok((name, items.collect())),
        Some(other) => Err(format!("event name is not a string: {other}")),
        None => Err("event payload is an empty array".to_owned()),
    }
}

/// Extracts the arguments of an ACK packet (a JSON array, possibly empty).
pub(crate) fn ack_args(data: Option<Value>) -> Result<Vec<Value>, String> {
    match data {
        Some(Value::Array(items)) => Ok(items),
        None => Ok(Vec::new()),
        Some(other) => Err(format!("ack payload is not a JSON array: {other}")),
    }
}

/// The human-readable reason of a CONNECT_ERROR (`44`) packet.
pub(crate) fn connect_error_message(data: Option<Value>) -> String {
    match data {
        Some(Value::Object(map)) => match map.get("message") {
            Some(Value::String(message)) => message.clone(),
            _ => Value::Object(map).to_string(),
        },
        // Socket.IO v4 servers send the message as a bare string.
        Some(Value::String(message)) => message,
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// `40` or `40<auth>`: CONNECT to the default namespace, as a websocket text frame.
pub(crate) fn encode_connect(auth: &Value) -> String {
    if auth.is_null() {
        "40".to_owned()
    } else {
        format!("40{auth}")
    }
}

/// `42[<ack id>]["event",data]`: an EVENT on the default namespace, as a websocket text frame.
pub(crate) fn encode_event(event: &str, data: &Value, ack_id: Option<u64>) -> String {
    let mut out = String::from("42");
    if let Some(id) = ack_id {
        // Writing to a String cannot fail.
        let _ = write!(out, "{id}");
    }
    let _ = write!(out, "[{},{}]", Value::from(event), data);
    out
}

/// `41`: DISCONNECT from the default namespace, as a websocket text frame.
pub(crate) const DISCONNECT: &str = "41";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn eio_packet_types() {
        assert_eq!(parse_eio("0{}"), Ok(EioPacket::Open("{}")));
        assert_eq!(parse_eio("1"), Ok(EioPacket::Close));
        assert_eq!(parse_eio("2"), Ok(EioPacket::Ping("")));
        assert_eq!(parse_eio("2probe"), Ok(EioPacket::Ping("probe")));
        assert_eq!(parse_eio("3"), Ok(EioPacket::Pong("")));
        assert_eq!(parse_eio("42[\"a\"]"), Ok(EioPacket::Message("2[\"a\"]")));
        assert_eq!(parse_eio("5"), Ok(EioPacket::Upgrade));
        assert_eq!(parse_eio("6"), Ok(EioPacket::Noop));
        assert!(parse_eio("").is_err());
        assert!(parse_eio("9").is_err());
        assert!(parse_eio("x").is_err());
    }

    #[test]
    fn open_packet() {
        let info = parse_open(
            r#"{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#,
        )
        .unwrap();
        assert_eq!(
            info,
            OpenInfo {
                sid: "lv_VI97HAXpY6yYWAAAC".into(),
                ping_interval: Duration::from_secs(25),
                ping_timeout: Duration::from_secs(20),
            }
        );
        assert!(parse_open(r#"{"sid":"x","pingInterval":1}"#).is_err());
        assert!(parse_open(r#"{"pingInterval":1,"pingTimeout":1}"#).is_err());
        assert!(parse_open("not json").is_err());
    }

    #[test]
    fn connect_ok() {
        let p = parse_sio(r#"0{"sid":"abc"}"#).unwrap();
        assert_eq!(p.kind, SioKind::Connect);
        assert_eq!(p.namespace, "/");
        assert_eq!(p.ack_id, None);
        assert_eq!(p.data, Some(json!({"sid": "abc"})));
    }

    #[test]
    fn connect_error() {
        let p = parse_sio(r#"4{"message":"Not authorized","data":{"code":401}}"#).unwrap();
        assert_eq!(p.kind, SioKind::ConnectError);
        assert_eq!(connect_error_message(p.data), "Not authorized");
        assert_eq!(connect_error_message(Some(json!("legacy"))), "legacy");
        assert_eq!(connect_error_message(Some(json!({"code": 1}))), r#"{"code":1}"#);
        assert_eq!(connect_error_message(None), "");
    }

    #[test]
    fn disconnect() {
        let p = parse_sio("1").unwrap();
        assert_eq!(p.kind, SioKind::Disconnect);
        assert_eq!(p.namespace, "/");
        assert_eq!(p.data, None);
        let p = parse_sio("1/admin,").unwrap();
        assert_eq!(p.namespace, "/admin");
        assert_eq!(p.data, None);
    }

    #[test]
    fn event_without_ack() {
        let p = parse_sio(r#"2["hello",{"a":1},2]"#).unwrap();
        assert_eq!(p.kind, SioKind::Event);
        assert_eq!(p.namespace, "/");
        assert_eq!(p.ack_id, None);
        let (name, args) = event_parts(p.data).unwrap();
        assert_eq!(name, "hello");
        assert_eq!(args, vec![json!({"a": 1}), json!(2)]);
    }

    #[test]
    fn event_with_ack_and_namespace() {
        let p = parse_sio(r#"2/chat,12["m",null]"#).unwrap();
        assert_eq!(p.kind, SioKind::Event);
        assert_eq!(p.namespace, "/chat");
        assert_eq!(p.ack_id, Some(12));
        assert_eq!(p.data, Some(json!(["m", null])));

        let p = parse_sio(r#"27["m"]"#).unwrap();
        assert_eq!(p.ack_id, Some(7));
        let (name, args) = event_parts(p.data).unwrap();
        assert_eq!(name, "m");
        assert!(args.is_empty());
    }

    #[test]
    fn ack() {
        let p = parse_sio(r#"30[{"ok":true}]"#).unwrap();
        assert_eq!(p.kind, SioKind::Ack);
        assert_eq!(p.ack_id, Some(0));
        assert_eq!(ack_args(p.data).unwrap(), vec![json!({"ok": true})]);

        let p = parse_sio("3123[]").unwrap();
        assert_eq!(p.ack_id, Some(123));
        assert_eq!(ack_args(p.data).unwrap(), Vec::<Value>::new());

        assert!(ack_args(Some(json!({"not": "array"}))).is_err());
        assert_eq!(ack_args(None).unwrap(), Vec::<Value>::new());
    }

    #[test]
    fn binary_packets() {
        let p = parse_sio(r#"51-["up",{"_placeholder":true,"num":0}]"#).unwrap();
        assert_eq!(p.kind, SioKind::BinaryEvent);
        assert_eq!(p.attachments, Some(1));
        assert_eq!(p.namespace, "/");
        assert_eq!(p.ack_id, None);

        let p = parse_sio(r#"62-/ns,4[{"_placeholder":true,"num":0}]"#).unwrap();
        assert_eq!(p.kind, SioKind::BinaryAck);
        assert_eq!(p.attachments, Some(2));
        assert_eq!(p.namespace, "/ns");
        assert_eq!(p.ack_id, Some(4));

        assert!(parse_sio(r#"5["no count"]"#).is_err());
        assert!(parse_sio(r#"5x-["bad count"]"#).is_err());
    }

    #[test]
    fn malformed_sio() {
        assert!(parse_sio("").is_err());
        assert!(parse_sio("7").is_err());
        assert!(parse_sio("2[\"unterminated\"").is_err());
        assert!(parse_sio("399999999999999999999999[]").is_err());
        assert!(event_parts(Some(json!({"a": 1}))).is_err());
        assert!(event_parts(Some(json!([]))).is_err());
        assert!(event_parts(Some(json!([1, 2]))).is_err());
        assert!(event_parts(None).is_err());
    }

    #[test]
    fn non_ascii_payload() {
        let p = parse_sio(r#"2["héllo","✓"]"#).unwrap();
        let (name, args) = event_parts(p.data).unwrap();
        assert_eq!(name, "héllo");
        assert_eq!(args, vec![json!("✓")]);
    }

    #[test]
    fn encoding() {
        assert_eq!(encode_connect(&Value::Null), "40");
        assert_eq!(encode_connect(&json!({"token": "t"})), r#"40{"token":"t"}"#);
        assert_eq!(
            encode_event("message:send", &json!({"body": "hi"}), None),
            r#"42["message:send",{"body":"hi"}]"#
        );
        assert_eq!(encode_event("a\"b", &json!("x"), Some(17)), r#"4217["a\"b","x"]"#);
        assert_eq!(encode_event("e", &Value::Null, Some(0)), r#"420["e",null]"#);
    }

    #[test]
    fn encode_then_parse_roundtrip() {
        let data = json!({"nested": [1, "two", {"three": 3.5}], "emoji": "🙂"});
        let wire = encode_event("ev", &data, Some(42));
        let EioPacket::Message(sio) = parse_eio(&wire).unwrap() else {
            panic!("not a message packet: {wire}");
        };
        let p = parse_sio(sio).unwrap();
        assert_eq!(p.kind, SioKind::Event);
        assert_eq!(p.ack_id, Some(42));
        let (name, args) = event_parts(p.data).unwrap();
        assert_eq!(name, "ev");
        assert_eq!(args, vec![data]);
    }
}
