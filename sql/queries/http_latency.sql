-- http_latency: p50/p95/p99 latency, request count and error rate per destination workload, optionally per route
--
-- Counts HTTP responses: they carry the status and latency_ns, and on a response Hubble swaps
-- the endpoints, so the server (the destination of the request) is src_*.
-- requests = responses seen; errors = responses with status >= 500; error_pct = 100 * errors / requests.
-- An aggregated exporter line counts as the flows it stands for (aggregate_count) in each.
-- Ranges up to rollup_above_hours read http_flows and give exact quantiles,
-- quantilesExactWeighted(0.5, 0.95, 0.99)(latency_ns, flows): the smallest latency that at least
-- q of the n flows do not exceed (nearest rank: 0-based rank ceil(q * n) - 1 of the n sorted
-- latencies, an aggregated line's latency n times), over the responses that carry a latency
-- (an aggregated line usually does not: latency_ns 0); 0 when none does. Longer ranges read http_rollup_1m, over the whole minutes that overlap the
-- range, with quantilesTDigestMerge(0.5, 0.95, 0.99) over the per-minute t-digests: approximate
-- (ClickHouse's t-digest has epsilon 0.01, so a centroid holds at most 1% of the values and the
-- estimate lies within 2% of n + 2 ranks of the exact one; an aggregated line with a latency is one
-- centroid of its weight, interpolated towards its neighbours), rounded to the microsecond.
-- The answer has the same columns either way; read_from says which table answered.
-- A route is the method and the path with ids collapsed: a path segment that is a number, a UUID,
-- or 8 or more hex digits with at least one digit becomes {id} (GET /reviews/{id}).
-- The rollups keep no path, so by_route = true always reads http_flows.
--
-- param: from DateTime64(9, 'UTC') (required) start of the time range, inclusive
-- param: until DateTime64(9, 'UTC') (required) end of the time range, exclusive
-- param: by_route Bool = false one row per destination workload and route instead of per workload
-- param: rollup_above_hours Float64 = 6 ranges longer than this many hours read the 1-minute rollups
-- columns: destination_namespace, destination_workload, route, requests, errors, error_pct, p50_ms, p95_ms
-- columns: p99_ms, read_from
SELECT destination_namespace, destination_workload, route, requests, errors, error_pct, p50_ms, p95_ms, p99_ms,
       read_from
FROM
(
    SELECT
        src_namespace AS destination_namespace,
        src_workload_name AS destination_workload,
        if({by_route:Bool},
           concat(method, ' ', arrayStringConcat(arrayMap(segment -> if(
               match(segment, '^[0-9]+$')
               OR match(segment, '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$')
               OR (match(segment, '^[0-9a-fA-F]{8,}$') AND match(segment, '[0-9]')),
               '{id}', segment), splitByChar('/', path)), '/')),
           '') AS route,
        sum(greatest(aggregate_count, 1)) AS requests,
        sumIf(greatest(aggregate_count, 1), status_code >= 500) AS errors,
        round(100 * errors / requests, 2) AS error_pct,
        quantilesExactWeightedIf(0.5, 0.95, 0.99)(latency_ns, greatest(aggregate_count, 1), latency_ns > 0)
            AS latency_quantiles,
        latency_quantiles[1] / 1e6 AS p50_ms,
        latency_quantiles[2] / 1e6 AS p95_ms,
        latency_quantiles[3] / 1e6 AS p99_ms,
        'http_flows' AS read_from
    FROM http_flows
    WHERE ({by_route:Bool}
           OR toUnixTimestamp64Nano({until:DateTime64(9, 'UTC')}) - toUnixTimestamp64Nano({from:DateTime64(9, 'UTC')})
              <= {rollup_above_hours:Float64} * 3.6e12)
      AND l7_type = 'RESPONSE'
      AND time >= {from:DateTime64(9, 'UTC')} AND time < {until:DateTime64(9, 'UTC')}
    GROUP BY destination_namespace, destination_workload, route

    UNION ALL

    SELECT
        destination_namespace,
        destination_workload,
        '' AS route,
        sum(requests) AS requests,
        sum(errors) AS errors,
        round(100 * errors / requests, 2) AS error_pct,
        quantilesTDigestMerge(0.5, 0.95, 0.99)(latency) AS latency_quantiles,
        round(toFloat64(latency_quantiles[1]) / 1e6, 3) AS p50_ms,
        round(toFloat64(latency_quantiles[2]) / 1e6, 3) AS p95_ms,
        round(toFloat64(latency_quantiles[3]) / 1e6, 3) AS p99_ms,
        'http_rollup_1m' AS read_from
    FROM http_rollup_1m
    WHERE NOT {by_route:Bool}
      AND toUnixTimestamp64Nano({until:DateTime64(9, 'UTC')}) - toUnixTimestamp64Nano({from:DateTime64(9, 'UTC')})
          > {rollup_above_hours:Float64} * 3.6e12
      AND time >= toStartOfMinute({from:DateTime64(9, 'UTC')}) AND time < {until:DateTime64(9, 'UTC')}
    GROUP BY destination_namespace, destination_workload
)
ORDER BY requests DESC, destination_namespace, destination_workload, route
