-- Commit journal of the loaders: optimistic concurrency for cluster decisions.
--
-- Before, every loader took one advisory lock for its whole transaction, so loads ran one at
-- a time and the second core stayed idle. Now a loader decides and writes without the lock,
-- then takes it only to validate and commit: under the lock it reads the journal rows
-- committed since it started (seq greater than the head it read first) and checks its new
-- articles against the articles those batches created (shared band hash verified as a copy,
-- or the same title key). A conflict rolls the batch back to a savepoint and redoes it under
-- the lock, where nothing else can commit meanwhile. seq is drawn under the lock, which is
-- held until commit, so seq order is commit order. Rows are kept for an hour (pruned by the
-- loaders), far longer than any load transaction lives.
CREATE TABLE news.load_journal (
    seq           bigserial PRIMARY KEY,
    committed_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    article_ids   bigint[] NOT NULL
);
CREATE INDEX load_journal_time_idx ON news.load_journal (committed_at);

-- Internal bookkeeping: not for analysts (the default privileges of 0004 would grant it).
REVOKE ALL ON news.load_journal FROM newsmon_analyst;
