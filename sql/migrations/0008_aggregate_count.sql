-- Migration 0008_aggregate_count: the flows an aggregated exporter line stands for (Cilium 1.19), counted with that weight by the rollups from now on.
-- Generated from ingest/store/ by
-- `flowlog migrate --write-sql`; do not edit. ${database}, ${ttl_days} and
-- ${rollup_ttl_days} are filled in from the config when `flowlog migrate` applies it.
-- By hand on ClickHouse before 24.1: SET allow_experimental_alter_materialized_view_structure = 1

ALTER TABLE `${database}`.`http_flows` ADD COLUMN IF NOT EXISTS `aggregate_count` UInt32 CODEC(ZSTD(1)) COMMENT 'flows an aggregated exporter line stands for (Cilium 1.19 hubble-export-fieldaggregate: ingress + egress + unknown direction); 0 for a single flow';

ALTER TABLE `${database}`.`dns_flows` ADD COLUMN IF NOT EXISTS `aggregate_count` UInt32 CODEC(ZSTD(1)) COMMENT 'flows an aggregated exporter line stands for (Cilium 1.19 hubble-export-fieldaggregate: ingress + egress + unknown direction); 0 for a single flow';

ALTER TABLE `${database}`.`l7_audit` ADD COLUMN IF NOT EXISTS `aggregate_count` UInt32 CODEC(ZSTD(1)) COMMENT 'flows an aggregated exporter line stands for (Cilium 1.19 hubble-export-fieldaggregate: ingress + egress + unknown direction); 0 for a single flow';

ALTER TABLE `${database}`.`http_rollup_1m_mv` MODIFY QUERY SELECT
    toStartOfMinute(time) AS `time`,
    node AS `node`,
    if(l7_type = 'RESPONSE', dst_namespace, src_namespace) AS `source_namespace`,
    if(l7_type = 'RESPONSE', if(dst_workload != '', dst_workload, arrayStringConcat(arrayMap(label -> substring(label, 10), arrayFilter(label -> startsWith(label, 'reserved:'), dst_labels)), ',')), if(src_workload != '', src_workload, arrayStringConcat(arrayMap(label -> substring(label, 10), arrayFilter(label -> startsWith(label, 'reserved:'), src_labels)), ','))) AS `source_workload`,
    if(l7_type = 'RESPONSE', src_namespace, dst_namespace) AS `destination_namespace`,
    if(l7_type = 'RESPONSE', src_workload_name, dst_workload_name) AS `destination_workload`,
    if(traffic_direction = 'INGRESS', 'server', 'client') AS `reporter`,
    method AS `method`,
    concat(toString(intDiv(status_code, 100)), 'xx') AS `status_class`,
    sum(greatest(aggregate_count, 1)) AS `requests`,
    sumIf(greatest(aggregate_count, 1), status_code >= 500) AS `errors`,
    sum(latency_ns * greatest(aggregate_count, 1)) AS `latency_sum_ns`,
    quantileTDigestState(latency_ns) AS `latency`
FROM `${database}`.`http_flows`
WHERE l7_type = 'RESPONSE'
GROUP BY `time`, `node`, `source_namespace`, `source_workload`, `destination_namespace`, `destination_workload`, `reporter`, `method`, `status_class`;

ALTER TABLE `${database}`.`dns_rollup_1m_mv` MODIFY QUERY SELECT
    toStartOfMinute(time) AS `time`,
    node AS `node`,
    if(l7_type = 'RESPONSE', dst_namespace, src_namespace) AS `source_namespace`,
    if(l7_type = 'RESPONSE', if(dst_workload != '', dst_workload, arrayStringConcat(arrayMap(label -> substring(label, 10), arrayFilter(label -> startsWith(label, 'reserved:'), dst_labels)), ',')), if(src_workload != '', src_workload, arrayStringConcat(arrayMap(label -> substring(label, 10), arrayFilter(label -> startsWith(label, 'reserved:'), src_labels)), ','))) AS `source_workload`,
    query AS `query`,
    arrayStringConcat(qtypes, ',') AS `qtypes`,
    rcode_name AS `rcode_name`,
    sumIf(greatest(aggregate_count, 1), l7_type = 'REQUEST') AS `queries`,
    sumIf(greatest(aggregate_count, 1), l7_type = 'RESPONSE') AS `responses`,
    sumIf(greatest(aggregate_count, 1), l7_type = 'RESPONSE' AND notEmpty(ips)) AS `responses_with_ips`,
    sum(length(ips) * greatest(aggregate_count, 1)) AS `ips_returned`
FROM `${database}`.`dns_flows`
GROUP BY `time`, `node`, `source_namespace`, `source_workload`, `query`, `qtypes`, `rcode_name`;
