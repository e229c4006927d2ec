-- Parley's query model: built by the persistence worker from the JetStream log, read by gateways.
-- Every write the worker makes is idempotent (conflicts do nothing, marks only move forward), so
-- a redelivered or re-driven event can never double a row or move state backwards.

-- One conversation per project. Its id is derived from the project id (uuid v5), so a repeated
-- `parley.project.started` maps onto the same row.
CREATE TABLE conversations (
    id                   uuid PRIMARY KEY,
    project_id           uuid NOT NULL UNIQUE,
    project_title        text NOT NULL,
    status               text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'closed')),
    started_at           timestamptz NOT NULL,
    closed_at            timestamptz,
    -- Denormalised last message, for the conversation list. Only ever moves to a higher seq.
    last_message_id      uuid,
    last_message_seq     bigint,
    last_message_sender  uuid,
    last_message_preview text,
    last_message_at      timestamptz,
    -- Latest activity: start, last message or close, whichever is latest.
    updated_at           timestamptz NOT NULL
);

-- Exactly the two parties of the project. `last_read_seq` is the participant's read mark.
CREATE TABLE participants (
    conversation_id uuid NOT NULL REFERENCES conversations (id),
    user_id         uuid NOT NULL,
    role            text NOT NULL CHECK (role IN ('client', 'provider')),
    display_name    text NOT NULL,
    email           text NOT NULL,
    last_read_seq   bigint NOT NULL DEFAULT 0,
    read_at         timestamptz,
    PRIMARY KEY (conversation_id, user_id)
);

-- "My conversations" is the hot read.
CREATE INDEX participants_by_user ON participants (user_id);

-- Messages. `seq` is the PARLEY_CHAT stream sequence, unique across the stream; `id` is the
-- message id clients see and the key idempotency rests on beyond the stream's duplicate window.
CREATE TABLE messages (
    id              uuid PRIMARY KEY,
    conversation_id uuid NOT NULL REFERENCES conversations (id),
    seq             bigint NOT NULL CHECK (seq > 0),
    sender_id       uuid NOT NULL,
    body            text NOT NULL,
    client_msg_id   text,
    created_at      timestamptz NOT NULL
);

-- History pages and unread counts walk one conversation by seq.
CREATE UNIQUE INDEX messages_by_conversation_seq ON messages (conversation_id, seq);
