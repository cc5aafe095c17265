-- request_trace: every HTTP flow of one request across hops, by X-Request-Id or trace id
--
-- Matches flows whose X-Request-Id header equals request_id exactly, or whose trace id equals it
-- (lower case): the W3C traceparent trace id (00-<trace id>-<parent id>-<flags>; a whole
-- traceparent value is accepted as request_id too) or the B3 trace id (X-B3-TraceId, or the first
-- field of a b3 header). Header names are matched in any case. Responses carry the request's
-- headers, so they appear too. source is the client and destination the server of the exchange
-- (namespace/pod, or IP when not a pod). In time order.
--
-- param: request_id String (required) an X-Request-Id value, a trace id, or a traceparent
-- param: from DateTime64(9, 'UTC') (required) start of the time range, inclusive
-- param: until DateTime64(9, 'UTC') (required) end of the time range, exclusive
-- columns: time, node, l7_type, source, destination, method, url, status, latency_ms, request_id, trace_id
WITH
    lower({request_id:String}) AS wanted,
    if(match(wanted, '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'), splitByChar('-', wanted)[2], wanted)
        AS wanted_trace_id
SELECT time, node, l7_type, source, destination, method, url, status, latency_ms, request_id, trace_id
FROM
(
    SELECT
        time,
        flow_id,
        node,
        l7_type,
        if(l7_type = 'RESPONSE', if(dst_pod = '', dst_workload_name, concat(dst_namespace, '/', dst_pod)),
                                 if(src_pod = '', src_workload_name, concat(src_namespace, '/', src_pod))) AS source,
        if(l7_type = 'RESPONSE', if(src_pod = '', src_workload_name, concat(src_namespace, '/', src_pod)),
                                 if(dst_pod = '', dst_workload_name, concat(dst_namespace, '/', dst_pod))) AS destination,
        method,
        url,
        status_code AS status,
        latency_ns / 1e6 AS latency_ms,
        mapApply((k, v) -> (lower(k), v), headers) AS lower_headers,
        lower_headers['x-request-id'] AS request_id,
        multiIf(lower_headers['traceparent'] != '', splitByChar('-', lower(lower_headers['traceparent']))[2],
                lower_headers['x-b3-traceid'] != '', lower(lower_headers['x-b3-traceid']),
                lower_headers['b3'] != '', splitByChar('-', lower(lower_headers['b3']))[1],
                '') AS trace_id
    FROM http_flows
    WHERE time >= {from:DateTime64(9, 'UTC')} AND time < {until:DateTime64(9, 'UTC')}
)
WHERE {request_id:String} != ''
  AND (request_id = {request_id:String} OR (trace_id != '' AND trace_id = wanted_trace_id))
ORDER BY time, flow_id
