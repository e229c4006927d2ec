-- Verifiable transcripts (contract, "Transcripts"): every conversation's entries (`started`, each
-- `message`, each moved `read` mark, `closed`) form a hash chain,
--   hash(n) = SHA-256(hash(n-1) || enc(kind) || enc(field1) || ...),  hash(-1) = 32 zero bytes,
-- fixed in the order Parley stored them.
--
-- Where the chain lives:
-- * `conversations.transcript_size` / `transcript_head`: how many entries are chained and the
--   last one's hash. Every write that appends entries locks the conversation's row first
--   (`SELECT … FOR UPDATE`, conversations in id order) and moves these two in the same
--   transaction as the rows it stores. So appends to one conversation are serialised by that
--   lock: two workers, or two batches of one worker, can never both extend the same head (a
--   fork), and an entry is chained exactly when its row commits. A redelivered event finds its
--   row there and appends nothing.
-- * `messages.chain_n` / `chain_hash`: a message's place in the chain and its hash, written by
--   the same `COPY` (or idempotent insert) that stores the row. The unique index below is the
--   database's own guard against two messages at one place.
-- * `transcript_entries`: the other kinds. A `read` entry keeps its own fields (a participant's
--   row keeps only the latest mark); `started` and `closed` read theirs from the conversation
--   and its participants, so `parley transcript check` recomputes every hash from the rows the
--   rest of Parley serves.
--
-- Existing conversations get their chain here, computed from the stored rows, and later writes
-- continue it: `started`, then the messages in `seq` order, then each participant's current
-- read mark (its earlier moves were never stored), then `closed` for a closed conversation. sqlx
-- runs a migration in one transaction under an advisory lock, so workers starting together
-- apply it once, and no worker writes while it runs (they start consuming after migrating).

ALTER TABLE conversations
    ADD COLUMN transcript_size bigint NOT NULL DEFAULT 0,
    ADD COLUMN transcript_head bytea CHECK (octet_length(transcript_head) = 32);

ALTER TABLE messages
    ADD COLUMN chain_n    bigint,
    ADD COLUMN chain_hash bytea;

CREATE TABLE transcript_entries (
    conversation_id uuid   NOT NULL REFERENCES conversations (id),
    n               bigint NOT NULL CHECK (n >= 0),
    kind            text   NOT NULL CHECK (kind IN ('started', 'read', 'closed')),
    -- A read entry's fields; null for the other kinds.
    user_id         uuid,
    seq             bigint,
    at              timestamptz,
    hash            bytea  NOT NULL CHECK (octet_length(hash) = 32),
    PRIMARY KEY (conversation_id, n),
    CHECK (kind <> 'read' OR (user_id IS NOT NULL AND seq IS NOT NULL AND at IS NOT NULL))
);

-- enc(s): the 4-byte big-endian length of s's UTF-8 bytes, then the bytes; enc(null) FF FF FF FF.
CREATE FUNCTION pg_temp.enc(s text) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN s IS NULL THEN '\xffffffff'::bytea
                ELSE int4send(octet_length(convert_to(s, 'UTF8'))) || convert_to(s, 'UTF8') END
$$;

-- Times as the export shows them: RFC 3339, UTC, milliseconds (cut, not rounded), `Z`.
CREATE FUNCTION pg_temp.rfc3339(t timestamptz) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;

DO $$
DECLARE
    c record;
    e record;
    n bigint;
    head bytea;
BEGIN
    FOR c IN
        SELECT conv.id, conv.project_id, conv.project_title, conv.started_at, conv.status, conv.closed_at,
               cl.user_id AS client_id, cl.display_name AS client_name,
               pr.user_id AS provider_id, pr.display_name AS provider_name
          FROM conversations conv
          JOIN participants cl ON cl.conversation_id = conv.id AND cl.role = 'client'
          JOIN participants pr ON pr.conversation_id = conv.id AND pr.role = 'provider'
    LOOP
        head := sha256('\x0000000000000000000000000000000000000000000000000000000000000000'::bytea
            || pg_temp.enc('started') || pg_temp.enc(c.id::text) || pg_temp.enc(c.project_id::text)
            || pg_temp.enc(c.project_title) || pg_temp.enc(c.client_id::text) || pg_temp.enc(c.client_name)
            || pg_temp.enc(c.provider_id::text) || pg_temp.enc(c.provider_name)
            || pg_temp.enc(pg_temp.rfc3339(c.started_at)));
        INSERT INTO transcript_entries (conversation_id, n, kind, hash) VALUES (c.id, 0, 'started', head);
        n := 1;
        FOR e IN SELECT id, seq, sender_id, body, created_at, client_msg_id
                   FROM messages WHERE conversation_id = c.id ORDER BY seq
        LOOP
            head := sha256(head || pg_temp.enc('message') || pg_temp.enc(e.seq::text) || pg_temp.enc(e.id::text)
                || pg_temp.enc(e.sender_id::text) || pg_temp.enc(e.body)
                || pg_temp.enc(pg_temp.rfc3339(e.created_at)) || pg_temp.enc(e.client_msg_id));
            UPDATE messages SET chain_n = n, chain_hash = head WHERE id = e.id;
            n := n + 1;
        END LOOP;
        FOR e IN SELECT user_id, last_read_seq, read_at FROM participants
                  WHERE conversation_id = c.id AND last_read_seq > 0
                  ORDER BY read_at NULLS FIRST, user_id
        LOOP
            -- A mark stored before read times were kept counts as read when the project started.
            head := sha256(head || pg_temp.enc('read') || pg_temp.enc(e.user_id::text)
                || pg_temp.enc(e.last_read_seq::text)
                || pg_temp.enc(pg_temp.rfc3339(coalesce(e.read_at, c.started_at))));
            INSERT INTO transcript_entries (conversation_id, n, kind, user_id, seq, at, hash)
                 VALUES (c.id, n, 'read', e.user_id, e.last_read_seq, coalesce(e.read_at, c.started_at), head);
            n := n + 1;
        END LOOP;
        IF c.status = 'closed' THEN
            head := sha256(head || pg_temp.enc('closed')
                || pg_temp.enc(pg_temp.rfc3339(coalesce(c.closed_at, c.started_at))));
            UPDATE conversations SET closed_at = coalesce(closed_at, started_at) WHERE id = c.id;
            INSERT INTO transcript_entries (conversation_id, n, kind, hash) VALUES (c.id, n, 'closed', head);
            n := n + 1;
        END IF;
        UPDATE conversations SET transcript_size = n, transcript_head = head WHERE id = c.id;
    END LOOP;
END
$$;

-- Every message is chained from here on: the worker writes both columns with the row.
ALTER TABLE messages
    ALTER COLUMN chain_n SET NOT NULL,
    ALTER COLUMN chain_hash SET NOT NULL,
    ADD CONSTRAINT messages_chain_hash_length CHECK (octet_length(chain_hash) = 32);

-- Exports walk a conversation's messages in chain order; no two messages share a place.
CREATE UNIQUE INDEX messages_by_conversation_chain ON messages (conversation_id, chain_n);
