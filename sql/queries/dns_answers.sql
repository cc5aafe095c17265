-- dns_answers: what a DNS name resolved to over a time range: answers, TTLs, rcodes, first/last seen, which pods asked
--
-- One row per distinct answer (query types, rcode, sorted answer IPs, CNAMEs) among the DNS
-- responses for the name. The asking pod is the destination of a response (dst_*), shown as
-- namespace/pod, or its IP when it is not a pod. Names are matched exactly (DNS names are
-- stored as Hubble reports them, usually lower case); the trailing dot is optional.
-- An aggregated exporter line counts as the flows it stands for (aggregate_count).
--
-- param: name String (required) the DNS name, e.g. reviews.bookinfo.svc.cluster.local
-- param: from DateTime64(9, 'UTC') (required) start of the time range, inclusive
-- param: until DateTime64(9, 'UTC') (required) end of the time range, exclusive
-- columns: query_types, rcode_name, answers, cnames, ttl_min, ttl_max, responses, first_seen, last_seen
-- columns: asked_by
SELECT
    arrayStringConcat(qtypes, ',') AS query_types,
    rcode_name,
    arraySort(ips) AS answers,
    cnames,
    min(ttl) AS ttl_min,
    max(ttl) AS ttl_max,
    sum(greatest(aggregate_count, 1)) AS responses,
    min(time) AS first_seen,
    max(time) AS last_seen,
    arraySort(groupUniqArray(if(dst_pod = '', dst_workload_name, concat(dst_namespace, '/', dst_pod)))) AS asked_by
FROM dns_flows
WHERE l7_type = 'RESPONSE'
  AND query IN ({name:String}, concat({name:String}, '.'))
  AND time >= {from:DateTime64(9, 'UTC')} AND time < {until:DateTime64(9, 'UTC')}
GROUP BY query_types, rcode_name, answers, cnames
ORDER BY first_seen, query_types, rcode_name, answers
