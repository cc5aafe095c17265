-- dns_failures: failed DNS lookups (NXDOMAIN, SERVFAIL, REFUSED, ...) by asking workload and name
--
-- Counts DNS responses with a non-zero rcode. An rcode that names no failure is refused, so
-- that a misspelt one cannot pass for none found. The asking workload is the destination of a
-- response (dst_*). Most first, at most limit rows.
-- An aggregated exporter line counts as the flows it stands for (aggregate_count).
--
-- param: from DateTime64(9, 'UTC') (required) start of the time range, inclusive
-- param: until DateTime64(9, 'UTC') (required) end of the time range, exclusive
-- param: rcode String = '' only this rcode (NXDOMAIN, SERVFAIL, ..., RCODE<n> for one with no name; any case); empty for all
-- param: limit UInt32 = 100 at most this many rows
-- columns: source_namespace, source_workload, name, rcode_name, responses, first_seen, last_seen
SELECT
    dst_namespace AS source_namespace,
    dst_workload_name AS source_workload,
    query AS name,
    rcode_name,
    sum(greatest(aggregate_count, 1)) AS responses,
    min(time) AS first_seen,
    max(time) AS last_seen
FROM dns_flows
WHERE (SELECT throwIf(NOT ({rcode:String} = ''
           OR upper({rcode:String}) IN ('FORMERR', 'SERVFAIL', 'NXDOMAIN', 'NOTIMP', 'REFUSED', 'YXDOMAIN', 'YXRRSET',
                                        'NXRRSET', 'NOTAUTH', 'NOTZONE', 'DSOTYPENI', 'BADVERS', 'BADKEY', 'BADTIME',
                                        'BADMODE', 'BADNAME', 'BADALG', 'BADTRUNC', 'BADCOOKIE')
           -- RCODE<n>, as stored for a number with no name: 12-15 and 24-65535
           OR (match({rcode:String}, '(?i)^RCODE[1-9][0-9]{0,4}$')
               AND toUInt32OrZero(substring({rcode:String}, 6)) <= 65535
               AND toUInt32OrZero(substring({rcode:String}, 6)) NOT IN (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
                                                                        16, 17, 18, 19, 20, 21, 22, 23))),
         'parameter rcode: not the name of a failure (NXDOMAIN, SERVFAIL, ..., RCODE<n>)')) = 0
  AND l7_type = 'RESPONSE'
  AND rcode != 0
  AND ({rcode:String} = '' OR rcode_name = upper({rcode:String}))
  AND time >= {from:DateTime64(9, 'UTC')} AND time < {until:DateTime64(9, 'UTC')}
GROUP BY source_namespace, source_workload, name, rcode_name
ORDER BY responses DESC, source_namespace, source_workload, name, rcode_name
LIMIT {limit:UInt32}
