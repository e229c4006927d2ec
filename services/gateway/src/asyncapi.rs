//! The AsyncAPI 3.0 document of what Parley says and hears outside HTTP: the Socket.IO events in
//! both directions (each client event with its acknowledgement as the operation's reply) and the
//! NATS subjects the marketplace and the notification system use. Its JSON Schemas come from the
//! same types the gateway and the workers read and write (their `utoipa::ToSchema`), so the
//! document cannot drift from the code; docs/asyncapi.yaml is this document as YAML, kept equal
//! by a test that also validates it against the AsyncAPI 3.0 schema.

use std::collections::BTreeMap;

use parley_domain::{Conversation, Message};
use parley_events::{Notification, ProjectClosed, ProjectStarted};
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;

use crate::api::{
    ConversationPayload, Done, HistoryPayload, HistoryReply, JoinPayload, JoinReply, ListReply, MarkReadPayload,
    MarkReadReply, SendPayload, SendReply, TypingPayload,
};
use crate::error::ErrorObject;

/// `message:read`: a participant's read mark moved up to one message.
#[derive(ToSchema)]
#[allow(dead_code)]
struct MessageRead {
    #[schema(rename = "conversationId")]
    conversation_id: uuid::Uuid,
    #[schema(rename = "messageId")]
    message_id: uuid::Uuid,
    #[schema(minimum = 1)]
    seq: i64,
    #[schema(rename = "userId")]
    user_id: uuid::Uuid,
    #[schema(rename = "readAt")]
    read_at: chrono::DateTime<chrono::Utc>,
}

/// `conversation:read`: a participant read the whole conversation.
#[derive(ToSchema)]
#[allow(dead_code)]
struct ConversationRead {
    #[schema(rename = "conversationId")]
    conversation_id: uuid::Uuid,
    #[schema(rename = "userId")]
    user_id: uuid::Uuid,
    #[schema(rename = "lastReadSeq", minimum = 0)]
    last_read_seq: i64,
    #[schema(rename = "readAt")]
    read_at: chrono::DateTime<chrono::Utc>,
}

/// `conversation:typing` from the server: the other participant started or stopped typing.
#[derive(ToSchema)]
#[allow(dead_code)]
struct TypingChanged {
    #[schema(rename = "conversationId")]
    conversation_id: uuid::Uuid,
    #[schema(rename = "userId")]
    user_id: uuid::Uuid,
    #[schema(rename = "isTyping")]
    is_typing: bool,
}

/// The schemas of `T` and of everything it refers to, by name.
fn add<T: ToSchema>(schemas: &mut BTreeMap<String, Value>) {
    let mut found: Vec<(String, RefOr<Schema>)> = Vec::new();
    T::schemas(&mut found);
    found.push((T::name().into_owned(), T::schema()));
    for (name, schema) in found {
        schemas.insert(name, serde_json::to_value(schema).expect("a schema serializes"));
    }
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// A client event: its payload's schema, and its ack's (the reply's fields with `ok: true`).
struct ClientEvent {
    event: &'static str,
    id: &'static str,
    summary: &'static str,
    payload: &'static str,
    reply: &'static str,
}

const CLIENT_EVENTS: [ClientEvent; 7] = [
    ClientEvent {
        event: "message:send",
        id: "messageSend",
        summary: "Send a message; acknowledged once it is durable in JetStream.",
        payload: "SendPayload",
        reply: "SendReply",
    },
    ClientEvent {
        event: "conversation:join",
        id: "conversationJoin",
        summary: "Check membership, subscribe to typing and replay what came after lastSeq (message:new with replayed: true) before the ack.",
        payload: "JoinPayload",
        reply: "JoinReply",
    },
    ClientEvent {
        event: "conversation:leave",
        id: "conversationLeave",
        summary: "Stop receiving the conversation's typing events.",
        payload: "ConversationPayload",
        reply: "Done",
    },
    ClientEvent {
        event: "conversation:typing",
        id: "conversationTyping",
        summary: "Say the caller started or stopped typing; not refreshed within 5 s, it ends.",
        payload: "TypingPayload",
        reply: "Done",
    },
    ClientEvent {
        event: "conversation:markRead",
        id: "conversationMarkRead",
        summary: "Move the caller's read mark to messageId, or to the latest message without one.",
        payload: "MarkReadPayload",
        reply: "MarkReadReply",
    },
    ClientEvent {
        event: "conversation:list",
        id: "conversationList",
        summary: "The caller's conversations, latest activity first.",
        payload: "EmptyPayload",
        reply: "ListReply",
    },
    ClientEvent {
        event: "conversation:history",
        id: "conversationHistory",
        summary: "A page of history, ascending by seq (limit 1..200, default 50).",
        payload: "HistoryPayload",
        reply: "HistoryReply",
    },
];

/// A server event: who gets it and its payload's schema.
struct ServerEvent {
    event: &'static str,
    id: &'static str,
    summary: &'static str,
    payload: Value,
}

fn server_events() -> [ServerEvent; 4] {
    [
        ServerEvent {
            event: "message:new",
            id: "messageNew",
            summary: "A message of one of the user's conversations, to every connected socket of both participants (the sender's too), exactly once per socket; replayed: true when a join's replay sends it.",
            payload: json!({
                "allOf": [
                    schema_ref("Message"),
                    {
                        "type": "object",
                        "properties": { "replayed": { "type": "boolean", "const": true } }
                    }
                ]
            }),
        },
        ServerEvent {
            event: "message:read",
            id: "messageRead",
            summary: "A participant's read mark moved up to one message; to every socket of both participants.",
            payload: schema_ref("MessageRead"),
        },
        ServerEvent {
            event: "conversation:read",
            id: "conversationRead",
            summary: "A participant read the whole conversation; to every socket of both participants.",
            payload: schema_ref("ConversationRead"),
        },
        ServerEvent {
            event: "conversation:typing",
            id: "conversationTypingChanged",
            summary: "The other participant started or stopped typing; to their counterpart's sockets that joined the conversation.",
            payload: schema_ref("TypingChanged"),
        },
    ]
}

/// The document, as JSON.
pub fn document() -> Value {
    let mut schemas = BTreeMap::new();
    add::<SendPayload>(&mut schemas);
    add::<JoinPayload>(&mut schemas);
    add::<ConversationPayload>(&mut schemas);
    add::<TypingPayload>(&mut schemas);
    add::<MarkReadPayload>(&mut schemas);
    add::<HistoryPayload>(&mut schemas);
    add::<SendReply>(&mut schemas);
    add::<JoinReply>(&mut schemas);
    add::<Done>(&mut schemas);
    add::<MarkReadReply>(&mut schemas);
    add::<ListReply>(&mut schemas);
    add::<HistoryReply>(&mut schemas);
    add::<ErrorObject>(&mut schemas);
    add::<Message>(&mut schemas);
    add::<Conversation>(&mut schemas);
    add::<MessageRead>(&mut schemas);
    add::<ConversationRead>(&mut schemas);
    add::<TypingChanged>(&mut schemas);
    add::<ProjectStarted>(&mut schemas);
    add::<ProjectClosed>(&mut schemas);
    add::<Notification>(&mut schemas);
    schemas.insert(
        "EmptyPayload".into(),
        json!({ "type": "object", "description": "No fields; anything given is ignored." }),
    );
    schemas.insert(
        "AckRefused".into(),
        json!({
            "type": "object",
            "description": "Any client event's acknowledgement when it is refused.",
            "required": ["ok", "error"],
            "properties": { "ok": { "const": false }, "error": schema_ref("ErrorObject") }
        }),
    );

    let mut socket_messages = serde_json::Map::new();
    let mut operations = serde_json::Map::new();
    for event in &CLIENT_EVENTS {
        socket_messages.insert(
            event.id.into(),
            json!({
                "name": event.event,
                "title": event.event,
                "summary": event.summary,
                "payload": schema_ref(event.payload),
            }),
        );
        let ack = format!("{}Ack", event.id);
        socket_messages.insert(
            ack.clone(),
            json!({
                "name": format!("{} ack", event.event),
                "title": format!("{} acknowledgement", event.event),
                "summary": "The acknowledgement callback's argument: ok and the answer, or ok: false and the error.",
                "payload": {
                    "oneOf": [
                        { "allOf": [
                            schema_ref(event.reply),
                            { "type": "object", "required": ["ok"], "properties": { "ok": { "const": true } } }
                        ] },
                        schema_ref("AckRefused")
                    ]
                },
            }),
        );
        operations.insert(
            event.id.into(),
            json!({
                "action": "receive",
                "channel": { "$ref": "#/channels/socket" },
                "summary": event.summary,
                "messages": [{ "$ref": format!("#/channels/socket/messages/{}", event.id) }],
                "reply": {
                    "channel": { "$ref": "#/channels/socket" },
                    "messages": [{ "$ref": format!("#/channels/socket/messages/{ack}") }]
                }
            }),
        );
    }
    for event in server_events() {
        socket_messages.insert(
            event.id.into(),
            json!({
                "name": event.event,
                "title": event.event,
                "summary": event.summary,
                "payload": event.payload,
            }),
        );
        operations.insert(
            event.id.into(),
            json!({
                "action": "send",
                "channel": { "$ref": "#/channels/socket" },
                "summary": event.summary,
                "messages": [{ "$ref": format!("#/channels/socket/messages/{}", event.id) }]
            }),
        );
    }
    operations.insert(
        "projectStarted".into(),
        json!({
            "action": "receive",
            "channel": { "$ref": "#/channels/projectStarted" },
            "summary": "The marketplace starts a project: its conversation is created with exactly these two participants. Idempotent and durable (kept in a stream until a worker applies it).",
            "messages": [{ "$ref": "#/channels/projectStarted/messages/projectStarted" }]
        }),
    );
    operations.insert(
        "projectClosed".into(),
        json!({
            "action": "receive",
            "channel": { "$ref": "#/channels/projectClosed" },
            "summary": "The marketplace closes a project: its conversation turns read-only.",
            "messages": [{ "$ref": "#/channels/projectClosed/messages/projectClosed" }]
        }),
    );
    operations.insert(
        "notify".into(),
        json!({
            "action": "send",
            "channel": { "$ref": "#/channels/notification" },
            "summary": "One notification per accepted message and recipient, kept in a JetStream stream to read live or with a durable consumer.",
            "messages": [{ "$ref": "#/channels/notification/messages/notification" }]
        }),
    );

    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Parley events",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Project messaging for a freelance marketplace: the Socket.IO events between clients and the gateway (every client event takes an acknowledgement callback, given here as the operation's reply), and the NATS subjects of the marketplace's lifecycle events and of the notifications. The HTTP API is docs/openapi.json.",
            "license": { "name": "MIT" }
        },
        "defaultContentType": "application/json",
        "servers": {
            "gateway": {
                "host": "127.0.0.1:8080",
                "protocol": "ws",
                "pathname": "/socket.io",
                "title": "A Parley gateway (PARLEY_LISTEN)",
                "description": "Socket.IO 4 (Engine.IO 4, WebSocket or long-polling), default namespace: io(url, { auth: { token } }). A missing, bad or expired token gets a connect error whose message is unauthorized; a user over PARLEY_MAX_SOCKETS_PER_USER gets too_many_connections. Binary packets are refused.",
                "security": [{ "$ref": "#/components/securitySchemes/token" }]
            },
            "nats": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "title": "The NATS (JetStream) Parley runs on (NATS_URL)"
            }
        },
        "channels": {
            "socket": {
                "address": "/",
                "title": "The default Socket.IO namespace",
                "description": "Events by name; each message's name is its Socket.IO event name.",
                "servers": [{ "$ref": "#/servers/gateway" }],
                "messages": socket_messages
            },
            "projectStarted": {
                "address": "parley.project.started",
                "servers": [{ "$ref": "#/servers/nats" }],
                "messages": {
                    "projectStarted": {
                        "name": "parley.project.started",
                        "title": "Project started",
                        "payload": schema_ref("ProjectStarted")
                    }
                }
            },
            "projectClosed": {
                "address": "parley.project.closed",
                "servers": [{ "$ref": "#/servers/nats" }],
                "messages": {
                    "projectClosed": {
                        "name": "parley.project.closed",
                        "title": "Project closed",
                        "payload": schema_ref("ProjectClosed")
                    }
                }
            },
            "notification": {
                "address": "parley.notification.{recipientId}",
                "description": "Stream PARLEY_NOTIFICATIONS holds every subject parley.notification.>.",
                "servers": [{ "$ref": "#/servers/nats" }],
                "parameters": {
                    "recipientId": { "description": "The recipient's user id (a UUID)." }
                },
                "messages": {
                    "notification": {
                        "name": "message.new",
                        "title": "A new message for a recipient",
                        "headers": {
                            "type": "object",
                            "required": ["Nats-Msg-Id"],
                            "properties": {
                                "Nats-Msg-Id": {
                                    "type": "string",
                                    "description": "<messageId>.<recipientId>: JetStream drops a repeat of the same notification.",
                                    "pattern": "^[0-9a-f-]{36}\\.[0-9a-f-]{36}$"
                                }
                            }
                        },
                        "payload": schema_ref("Notification")
                    }
                }
            }
        },
        "operations": operations,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "token": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "The JWT goes in the Socket.IO handshake's auth object: io(url, { auth: { token } }). HS256 with PARLEY_JWT_SECRET, or RS256, ES256 or EdDSA from the identity provider; sub is the user's UUID, exp is required."
                }
            }
        }
    })
}
