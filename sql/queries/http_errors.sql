-- http_errors: HTTP 4xx/5xx responses by source workload, destination workload and status, over time
--
-- Counts responses with status >= min_status in buckets of step_seconds, aligned to multiples of
-- step_seconds since the Unix epoch (UTC). The source (client) of a response is dst_*, the
-- destination (server) src_*. Reads http_flows (the rollups keep only the status class).
-- An aggregated exporter line counts as the flows it stands for (aggregate_count).
--
-- param: from DateTime64(9, 'UTC') (required) start of the time range, inclusive
-- param: until DateTime64(9, 'UTC') (required) end of the time range, exclusive
-- param: step_seconds UInt32 = 3600 width of a time bucket in seconds, at least 1
-- param: min_status UInt16 = 400 lowest status counted (500 for server errors only)
-- columns: bucket, source_namespace, source_workload, destination_namespace, destination_workload, status
-- columns: responses
SELECT
    toDateTime(intDiv(toUnixTimestamp(time), {step_seconds:UInt32}) * {step_seconds:UInt32}, 'UTC') AS bucket,
    dst_namespace AS source_namespace,
    dst_workload_name AS source_workload,
    src_namespace AS destination_namespace,
    src_workload_name AS destination_workload,
    status_code AS status,
    sum(greatest(aggregate_count, 1)) AS responses
FROM http_flows
WHERE (SELECT throwIf({step_seconds:UInt32} = 0, 'parameter step_seconds: at least 1 (a bucket of 0 seconds)')) = 0
  AND l7_type = 'RESPONSE'
  AND status_code >= {min_status:UInt16}
  AND time >= {from:DateTime64(9, 'UTC')} AND time < {until:DateTime64(9, 'UTC')}
GROUP BY bucket, source_namespace, source_workload, destination_namespace, destination_workload, status
ORDER BY bucket, responses DESC, source_namespace, source_workload, destination_namespace, destination_workload, status
