-- Messages keep no index on their place in the chain. Measured on the 2-core machine of
-- `docs/benchmarks.md`, `COPY` of 200,000 chained rows in batches of 5,000 into 50
-- conversations: 102–109k rows/s without the chain columns, 101–106k with them, 81–88k with
-- them and this index. That index, a third B-tree on every insert, was most of what chaining
-- cost the persistence worker (about 20% of its figure, as much as it cost `COPY`).
--
-- Nothing needs it. What keeps the chain single is the conversation's row lock (see
-- `Store::write_batch_continuing` and the migration before this one), and `parley transcript
-- check` names any message whose place does not match. An export reads a conversation's
-- messages through `messages_by_conversation_seq` and Postgres sorts them by `chain_n`, which
-- is nearly always their `seq` order already.

DROP INDEX messages_by_conversation_chain;
