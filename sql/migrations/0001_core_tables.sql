-- Migration 0001_core_tables: the typed flow tables, the audit table of whole flows, the gaps.
-- Generated from ingest/store/ by
-- `flowlog migrate --write-sql`; do not edit. ${database}, ${ttl_days} and
-- ${rollup_ttl_days} are filled in from the config when `flowlog migrate` applies it.

CREATE TABLE IF NOT EXISTS `${database}`.`http_flows`
(
    `time` DateTime64(9, 'UTC') CODEC(Delta, ZSTD(1)) COMMENT 'time of the flow, UTC, nanoseconds',
    `node` LowCardinality(String) COMMENT 'Cilium node that observed the flow',
    `flow_id` String CODEC(ZSTD(1)) COMMENT 'Hubble uuid, else a hash of the flow content',
    `verdict` LowCardinality(String) COMMENT 'FORWARDED, DROPPED, ...',
    `l7_type` LowCardinality(String) COMMENT 'REQUEST or RESPONSE',
    `traffic_direction` LowCardinality(String) COMMENT 'INGRESS or EGRESS',
    `is_reply` Nullable(Bool) COMMENT 'true for replies; NULL when Hubble did not know',
    `src_namespace` LowCardinality(String) COMMENT 'Kubernetes namespace of the source',
    `src_pod` LowCardinality(String) COMMENT 'pod name of the source',
    `src_workload` LowCardinality(String) COMMENT 'workload of the source (Hubble workloads, else derived from pod name or app label)',
    `src_identity` UInt32 CODEC(ZSTD(1)) COMMENT 'Cilium security identity of the source',
    `src_ip` String CODEC(ZSTD(1)) COMMENT 'IP address of the source',
    `src_port` UInt16 CODEC(ZSTD(1)) COMMENT 'L4 port of the source',
    `src_labels` Array(LowCardinality(String)) COMMENT 'Cilium labels of the source',
    `src_names` Array(String) CODEC(ZSTD(1)) COMMENT 'DNS names of the source known to Cilium',
    `dst_namespace` LowCardinality(String) COMMENT 'Kubernetes namespace of the destination',
    `dst_pod` LowCardinality(String) COMMENT 'pod name of the destination',
    `dst_workload` LowCardinality(String) COMMENT 'workload of the destination (Hubble workloads, else derived from pod name or app label)',
    `dst_identity` UInt32 CODEC(ZSTD(1)) COMMENT 'Cilium security identity of the destination',
    `dst_ip` String CODEC(ZSTD(1)) COMMENT 'IP address of the destination',
    `dst_port` UInt16 CODEC(ZSTD(1)) COMMENT 'L4 port of the destination',
    `dst_labels` Array(LowCardinality(String)) COMMENT 'Cilium labels of the destination',
    `dst_names` Array(String) CODEC(ZSTD(1)) COMMENT 'DNS names of the destination known to Cilium',
    `method` LowCardinality(String),
    `url` String CODEC(ZSTD(1)) COMMENT 'full URL as Hubble reported it (userinfo stripped)',
    `host` LowCardinality(String),
    `path` String CODEC(ZSTD(1)),
    `query` String CODEC(ZSTD(1)) COMMENT 'URL query string',
    `protocol` LowCardinality(String) COMMENT 'HTTP/1.1, HTTP/2, ...',
    `status_code` UInt16 CODEC(ZSTD(1)) COMMENT '0 on requests',
    `latency_ns` UInt64 CODEC(ZSTD(1)) COMMENT 'request to response, on responses; 0 on requests',
    `headers` Map(LowCardinality(String), String) CODEC(ZSTD(1)) COMMENT 'allow-listed headers, sensitive values redacted',
    INDEX idx_flow_id flow_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toDate(time)
ORDER BY (toStartOfHour(time), if(l7_type = 'RESPONSE', src_namespace, dst_namespace), if(l7_type = 'RESPONSE', src_workload, dst_workload), if(l7_type = 'RESPONSE', dst_namespace, src_namespace), if(l7_type = 'RESPONSE', dst_workload, src_workload), if(l7_type = 'RESPONSE', dst_pod, src_pod), if(l7_type = 'RESPONSE', dst_port, src_port), time)
TTL toDateTime(time) + INTERVAL ${ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1
COMMENT 'One row per L7 HTTP flow (requests and responses)';

CREATE TABLE IF NOT EXISTS `${database}`.`dns_flows`
(
    `time` DateTime64(9, 'UTC') CODEC(Delta, ZSTD(1)) COMMENT 'time of the flow, UTC, nanoseconds',
    `node` LowCardinality(String) COMMENT 'Cilium node that observed the flow',
    `flow_id` String CODEC(ZSTD(1)) COMMENT 'Hubble uuid, else a hash of the flow content',
    `verdict` LowCardinality(String) COMMENT 'FORWARDED, DROPPED, ...',
    `l7_type` LowCardinality(String) COMMENT 'REQUEST or RESPONSE',
    `traffic_direction` LowCardinality(String) COMMENT 'INGRESS or EGRESS',
    `is_reply` Nullable(Bool) COMMENT 'true for replies; NULL when Hubble did not know',
    `src_namespace` LowCardinality(String) COMMENT 'Kubernetes namespace of the source',
    `src_pod` LowCardinality(String) COMMENT 'pod name of the source',
    `src_workload` LowCardinality(String) COMMENT 'workload of the source (Hubble workloads, else derived from pod name or app label)',
    `src_identity` UInt32 CODEC(ZSTD(1)) COMMENT 'Cilium security identity of the source',
    `src_ip` String CODEC(ZSTD(1)) COMMENT 'IP address of the source',
    `src_port` UInt16 CODEC(ZSTD(1)) COMMENT 'L4 port of the source',
    `src_labels` Array(LowCardinality(String)) COMMENT 'Cilium labels of the source',
    `src_names` Array(String) CODEC(ZSTD(1)) COMMENT 'DNS names of the source known to Cilium',
    `dst_namespace` LowCardinality(String) COMMENT 'Kubernetes namespace of the destination',
    `dst_pod` LowCardinality(String) COMMENT 'pod name of the destination',
    `dst_workload` LowCardinality(String) COMMENT 'workload of the destination (Hubble workloads, else derived from pod name or app label)',
    `dst_identity` UInt32 CODEC(ZSTD(1)) COMMENT 'Cilium security identity of the destination',
    `dst_ip` String CODEC(ZSTD(1)) COMMENT 'IP address of the destination',
    `dst_port` UInt16 CODEC(ZSTD(1)) COMMENT 'L4 port of the destination',
    `dst_labels` Array(LowCardinality(String)) COMMENT 'Cilium labels of the destination',
    `dst_names` Array(String) CODEC(ZSTD(1)) COMMENT 'DNS names of the destination known to Cilium',
    `query` String CODEC(ZSTD(1)) COMMENT 'the queried name, with trailing dot',
    `qtypes` Array(LowCardinality(String)) COMMENT 'A, AAAA, ...',
    `rcode` UInt16 CODEC(ZSTD(1)) COMMENT 'DNS response code; 0 on queries',
    `rcode_name` LowCardinality(String) COMMENT 'NOERROR, NXDOMAIN, ...; empty on queries',
    `ips` Array(String) CODEC(ZSTD(1)) COMMENT 'answer addresses',
    `ttl` UInt32 CODEC(ZSTD(1)) COMMENT 'TTL of the answer',
    `cnames` Array(String) CODEC(ZSTD(1)),
    `rrtypes` Array(LowCardinality(String)),
    `observation_source` LowCardinality(String) COMMENT 'proxy or another observer',
    `latency_ns` UInt64 CODEC(ZSTD(1)) COMMENT 'query to response, on responses',
    INDEX idx_flow_id flow_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toDate(time)
ORDER BY (toStartOfHour(time), src_namespace, src_workload, query, time)
TTL toDateTime(time) + INTERVAL ${ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1
COMMENT 'One row per L7 DNS flow (queries and responses)';

CREATE TABLE IF NOT EXISTS `${database}`.`l7_audit`
(
    `time` DateTime64(9, 'UTC') CODEC(Delta, ZSTD(1)),
    `node` LowCardinality(String),
    `flow_id` String CODEC(ZSTD(1)),
    `type` LowCardinality(String) COMMENT 'HTTP, DNS or KAFKA: which L7 record the flow holds; empty when an exporter\'s field mask left it out',
    `l7_type` LowCardinality(String),
    `flow` String CODEC(ZSTD(3)) COMMENT 'the flow.Flow message, protobuf wire format'
)
ENGINE = MergeTree
PARTITION BY toDate(time)
ORDER BY (toStartOfHour(time), node, flow_id)
TTL toDateTime(time) + INTERVAL ${ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1, index_granularity_bytes = 1048576
COMMENT 'Every ingested L7 flow in full (flow.Flow protobuf bytes), for audits and re-derivation';

CREATE TABLE IF NOT EXISTS `${database}`.`ingest_gaps`
(
    `time` DateTime64(9, 'UTC') CODEC(Delta, ZSTD(1)) COMMENT 'when the gap was reported (spool_unreadable: when the lost batch was written)',
    `node` LowCardinality(String),
    `gap_id` String CODEC(ZSTD(1)) COMMENT 'hash of the report, so a replay stores it once',
    `kind` LowCardinality(String) COMMENT 'lost_events, node_status, stream_interrupted or spool_unreadable',
    `source` LowCardinality(String) COMMENT 'who lost them (HUBBLE_RING_BUFFER, ...) or the source address',
    `count` UInt64 COMMENT 'events lost; 0 when unknown',
    `first` DateTime64(9, 'UTC') COMMENT 'first time covered by the gap',
    `last` DateTime64(9, 'UTC') COMMENT 'last time covered by the gap',
    `message` String CODEC(ZSTD(1))
)
ENGINE = MergeTree
PARTITION BY toDate(time)
ORDER BY (node, time)
TTL toDateTime(time) + INTERVAL ${ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1
COMMENT 'Lost events, node status changes and stream interruptions: what may be missing';

CREATE TABLE IF NOT EXISTS `${database}`.`schema_migrations`
(
    `version` UInt32,
    `applied_at` DateTime64(3, 'UTC'),
    `description` String
)
ENGINE = MergeTree
PARTITION BY tuple()
ORDER BY (version)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Versions of the hubble-flowlog schema applied to this database';
