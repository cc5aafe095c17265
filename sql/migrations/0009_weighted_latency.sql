-- Migration 0009_weighted_latency: HTTP latency in the rollup weighted by the flows a row stands for, without the responses that carry none, and their count for the mean; rows rolled up before count all their responses.
-- Generated from ingest/store/ by
-- `flowlog migrate --write-sql`; do not edit. ${database}, ${ttl_days} and
-- ${rollup_ttl_days} are filled in from the config when `flowlog migrate` applies it.
-- By hand on ClickHouse before 24.1: SET allow_experimental_alter_materialized_view_structure = 1

ALTER TABLE `${database}`.`http_rollup_1m` ADD COLUMN IF NOT EXISTS `responses_with_latency` SimpleAggregateFunction(sum, UInt64) DEFAULT requests COMMENT 'responses that carry a latency (an aggregated exporter line usually does not): the mean latency is sum(latency_sum_ns) / sum(responses_with_latency)';

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
    CAST(CAST(quantileTDigestWeightedIfState(latency_ns, greatest(aggregate_count, 1), latency_ns > 0) AS String) AS AggregateFunction(quantileTDigest, UInt64)) AS `latency`,
    sumIf(greatest(aggregate_count, 1), latency_ns > 0) AS `responses_with_latency`
FROM `${database}`.`http_flows`
WHERE l7_type = 'RESPONSE'
GROUP BY `time`, `node`, `source_namespace`, `source_workload`, `destination_namespace`, `destination_workload`, `reporter`, `method`, `status_class`;
