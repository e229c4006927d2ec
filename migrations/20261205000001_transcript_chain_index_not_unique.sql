-- A batch of the persistence worker may now copy its messages onto the chain heads it predicts
-- (those its previous batch left) before it locks the conversations' rows, and keeps them only
-- if the lock finds those same heads (see `Store::write_batch_continuing`). Until that check,
-- such rows may stand at places another worker's uncommitted rows also take. Were the index on
-- (conversation_id, chain_n) unique, each insert would wait for the other transaction, which
-- could be waiting for this one's rows at another conversation's places: a deadlock, broken by
-- Postgres only after `deadlock_timeout`. The row lock is what keeps the chain single: every
-- committed entry is linked onto heads read under that lock, and a message stands at one place
-- only (`parley transcript check` recomputes every place and names any that does not match).
-- The index stays, not unique, for exports, which read a conversation's messages in chain
-- order. Rebuilding it takes a lock on `messages` for as long as the build; on a large table,
-- run this migration at a quiet time.

DROP INDEX messages_by_conversation_chain;
CREATE INDEX messages_by_conversation_chain ON messages (conversation_id, chain_n);
