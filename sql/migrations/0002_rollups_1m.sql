-- Migration 0002_rollups_1m: per-minute rollups of HTTP and DNS, filled by materialized views.
-- Generated from ingest/store/ by
-- `flowlog migrate --write-sql`; do not edit. ${database}, ${ttl_days} and
-- ${rollup_ttl_days} are filled in from the config when `flowlog migrate` applies it.

CREATE TABLE IF NOT EXISTS `${database}`.`http_rollup_1m`
(
    `time` DateTime('UTC') CODEC(Delta, ZSTD(1)) COMMENT 'start of the minute',
    `node` LowCardinality(String),
    `source_namespace` LowCardinality(String),
    `source_workload` LowCardinality(String),
    `destination_namespace` LowCardinality(String),
    `destination_workload` LowCardinality(String),
    `reporter` LowCardinality(String) COMMENT 'client (seen on egress) or server (seen on ingress), as Hubble\'s httpV2',
    `method` LowCardinality(String),
    `status_class` LowCardinality(String) COMMENT '2xx, 3xx, 4xx, 5xx; 0xx when the proxy saw no status',
    `requests` SimpleAggregateFunction(sum, UInt64),
    `errors` SimpleAggregateFunction(sum, UInt64) COMMENT 'responses with status 500 or more',
    `latency_sum_ns` SimpleAggregateFunction(sum, UInt64),
    `latency` AggregateFunction(quantileTDigest, UInt64) COMMENT 'latency_ns t-digest: quantileTDigestMerge(0.99)(latency)'
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (destination_namespace, destination_workload, time, source_namespace, source_workload, method, status_class, node, reporter)
TTL toDateTime(time) + INTERVAL ${rollup_ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1
COMMENT 'HTTP responses per minute, client and server workload, method and status class';

CREATE MATERIALIZED VIEW IF NOT EXISTS `${database}`.`http_rollup_1m_mv` TO `${database}`.`http_rollup_1m`
AS SELECT
    toStartOfMinute(time) AS `time`,
    node AS `node`,
    if(l7_type = 'RESPONSE', dst_namespace, src_namespace) AS `source_namespace`,
    if(l7_type = 'RESPONSE', dst_workload, src_workload) AS `source_workload`,
    if(l7_type = 'RESPONSE', src_namespace, dst_namespace) AS `destination_namespace`,
    if(l7_type = 'RESPONSE', src_workload, dst_workload) AS `destination_workload`,
    if(traffic_direction = 'INGRESS', 'server', 'client') AS `reporter`,
    method AS `method`,
    concat(toString(intDiv(status_code, 100)), 'xx') AS `status_class`,
    count() AS `requests`,
    countIf(status_code >= 500) AS `errors`,
    sum(latency_ns) AS `latency_sum_ns`,
    quantileTDigestState(latency_ns) AS `latency`
FROM `${database}`.`http_flows`
WHERE l7_type = 'RESPONSE'
GROUP BY `time`, `node`, `source_namespace`, `source_workload`, `destination_namespace`, `destination_workload`, `reporter`, `method`, `status_class`;

CREATE TABLE IF NOT EXISTS `${database}`.`dns_rollup_1m`
(
    `time` DateTime('UTC') CODEC(Delta, ZSTD(1)) COMMENT 'start of the minute',
    `node` LowCardinality(String),
    `source_namespace` LowCardinality(String) COMMENT 'namespace of the pod that asked',
    `source_workload` LowCardinality(String) COMMENT 'workload of the pod that asked',
    `query` String CODEC(ZSTD(1)),
    `qtypes` LowCardinality(String) COMMENT 'comma-separated, as Hubble\'s qtypes label',
    `rcode_name` LowCardinality(String) COMMENT 'empty for queries',
    `queries` SimpleAggregateFunction(sum, UInt64),
    `responses` SimpleAggregateFunction(sum, UInt64),
    `responses_with_ips` SimpleAggregateFunction(sum, UInt64),
    `ips_returned` SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (source_namespace, source_workload, time, query, qtypes, rcode_name, node)
TTL toDateTime(time) + INTERVAL ${rollup_ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1
COMMENT 'DNS queries and responses per minute, asking workload, name, rcode and query types';

CREATE MATERIALIZED VIEW IF NOT EXISTS `${database}`.`dns_rollup_1m_mv` TO `${database}`.`dns_rollup_1m`
AS SELECT
    toStartOfMinute(time) AS `time`,
    node AS `node`,
    if(l7_type = 'RESPONSE', dst_namespace, src_namespace) AS `source_namespace`,
    if(l7_type = 'RESPONSE', dst_workload, src_workload) AS `source_workload`,
    query AS `query`,
    arrayStringConcat(qtypes, ',') AS `qtypes`,
    rcode_name AS `rcode_name`,
    countIf(l7_type = 'REQUEST') AS `queries`,
    countIf(l7_type = 'RESPONSE') AS `responses`,
    countIf(l7_type = 'RESPONSE' AND notEmpty(ips)) AS `responses_with_ips`,
    sum(length(ips)) AS `ips_returned`
FROM `${database}`.`dns_flows`
GROUP BY `time`, `node`, `source_namespace`, `source_workload`, `query`, `qtypes`, `rcode_name`;
