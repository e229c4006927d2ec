-- Each participant's unread count: the other party's messages above their read mark. Kept by
-- the persistence worker in the transaction that stores the messages or moves the mark, so that
-- conversation lists and join acks read a number instead of counting the unread backlog, which
-- cost a scan of every unread message per conversation per request.
--
-- How it stays exact when batches commit concurrently (two workers, or a batch written while the
-- previous one commits):
-- * New messages add, per recipient, those above the recipient's mark as it is when the row is
--   updated. A mark moved by a transaction that commits first is seen: Postgres re-evaluates the
--   update against the committed row.
-- * A moved mark recounts, in a statement after the one that moved (and locked) the row, so the
--   recount sees every message whose transaction updated the row before.
ALTER TABLE participants ADD COLUMN unread_count bigint NOT NULL DEFAULT 0;

UPDATE participants p
   SET unread_count = (SELECT count(*) FROM messages m
                        WHERE m.conversation_id = p.conversation_id
                          AND m.sender_id <> p.user_id
                          AND m.seq > p.last_read_seq);
