-- dns_reverse: which DNS names resolved to an IP address, and when (the IP-to-name audit trail)
--
-- One row per name whose DNS responses listed the IP among their answers. The asking pod is the
-- destination of a response (dst_*), shown as namespace/pod, or its IP when it is not a pod.
-- The IP is compared as text, as Hubble reports it (10.96.0.10, 2001:db8::1).
-- An aggregated exporter line counts as the flows it stands for (aggregate_count).
--
-- param: ip String (required) the IP address
-- param: from DateTime64(9, 'UTC') (required) start of the time range, inclusive
-- param: until DateTime64(9, 'UTC') (required) end of the time range, exclusive
-- columns: name, first_seen, last_seen, responses, ttl_min, ttl_max, asked_by
SELECT
    query AS name,
    min(time) AS first_seen,
    max(time) AS last_seen,
    sum(greatest(aggregate_count, 1)) AS responses,
    min(ttl) AS ttl_min,
    max(ttl) AS ttl_max,
    arraySort(groupUniqArray(if(dst_pod = '', dst_workload_name, concat(dst_namespace, '/', dst_pod)))) AS asked_by
FROM dns_flows
WHERE l7_type = 'RESPONSE'
  AND has(ips, {ip:String})
  AND time >= {from:DateTime64(9, 'UTC')} AND time < {until:DateTime64(9, 'UTC')}
GROUP BY name
ORDER BY first_seen, name
