-- Migration 0003_ingest_ledger: a ledger row per batch and node: received, stored, duplicates, lost.
-- Generated from ingest/store/ by
-- `flowlog migrate --write-sql`; do not edit. ${database}, ${ttl_days} and
-- ${rollup_ttl_days} are filled in from the config when `flowlog migrate` applies it.

CREATE TABLE IF NOT EXISTS `${database}`.`ingest_ledger`
(
    `time` DateTime64(9, 'UTC') CODEC(Delta, ZSTD(1)) COMMENT 'oldest flow of the batch from this node (commit time if none)',
    `window_end` DateTime64(9, 'UTC') CODEC(Delta, ZSTD(1)) COMMENT 'newest flow of the batch from this node',
    `committed_at` DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)) COMMENT 'when the batch was made durable',
    `node` LowCardinality(String),
    `source` LowCardinality(String) COMMENT 'the Hubble address or the replayed file',
    `ledger_id` String CODEC(ZSTD(1)) COMMENT 'batch id and node',
    `received` UInt64 COMMENT 'L7 flows received',
    `filtered` UInt64 COMMENT 'non-L7 flows received and not stored',
    `stored_http` UInt64,
    `stored_dns` UInt64,
    `stored_audit` UInt64 COMMENT 'L7 flows stored (every stored flow has an audit row)',
    `stored_gaps` UInt64,
    `duplicates` UInt64 COMMENT 'L7 flows received that were already stored',
    `quarantined` UInt64 COMMENT 'input written to the dead-letter file',
    `lost` UInt64 COMMENT 'events Hubble reported lost'
)
ENGINE = MergeTree
PARTITION BY toDate(time)
ORDER BY (node, time)
TTL toDateTime(time) + INTERVAL ${ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1
COMMENT 'What each committed batch received and did with it, per source and node: the books that must balance';
