-- http_slowest: the N slowest HTTP requests, with source, destination, url, status and latency
--
-- One row per response (responses carry latency_ns: request to response, as the proxy saw it),
-- slowest first; ties by time. On a response Hubble swaps the endpoints: the source (client) is
-- dst_*, the destination (server) src_*.
--
-- param: from DateTime64(9, 'UTC') (required) start of the time range, inclusive
-- param: until DateTime64(9, 'UTC') (required) end of the time range, exclusive
-- param: limit UInt32 = 20 how many requests
-- columns: time, source_namespace, source_workload, source_pod, destination_namespace, destination_workload
-- columns: destination_pod, method, url, status, latency_ms
SELECT
    time,
    dst_namespace AS source_namespace,
    dst_workload_name AS source_workload,
    dst_pod AS source_pod,
    src_namespace AS destination_namespace,
    src_workload_name AS destination_workload,
    src_pod AS destination_pod,
    method,
    url,
    status_code AS status,
    latency_ns / 1e6 AS latency_ms
FROM http_flows
WHERE l7_type = 'RESPONSE'
  AND time >= {from:DateTime64(9, 'UTC')} AND time < {until:DateTime64(9, 'UTC')}
ORDER BY latency_ns DESC, time, flow_id
LIMIT {limit:UInt32}
