-- audit_talkers: who talked to a destination between two times, with counts and first/last seen
--
-- The destination is matched against the server side of every HTTP and DNS flow (on a request
-- dst_*, on a response src_*): its workload (name or namespace/name), pod (name or
-- namespace/pod), IP, the DNS names Cilium knew for it, the HTTP Host with or without its port,
-- the FQDN of that Host in the server's namespace (reviews -> reviews.bookinfo.svc...), or an IP
-- that a DNS response for the destination (as a name, trailing dot optional) listed between one
-- day before from and until. An IP also stands for the names DNS responses in that window gave it
-- as an answer: a Service's ClusterIP matches the flows sent to that Service by name, as Hubble
-- records them with the backend pod's IP after Cilium's load balancing. For an IP that many names
-- share (a CDN's edge, an ingress load balancer) this counts the flows to any of those names,
-- whichever of their addresses they went to. One row per client workload and protocol; an
-- aggregated exporter line counts as the flows it stands for (aggregate_count).
--
-- param: destination String (required) a workload, service, pod, IP or DNS name
-- param: from DateTime64(9, 'UTC') (required) start of the time range, inclusive
-- param: until DateTime64(9, 'UTC') (required) end of the time range, exclusive
-- columns: source_namespace, source_workload, protocol, requests, responses, first_seen, last_seen
-- columns: source_pods, destinations
WITH
    (
        SELECT groupUniqArray(ip)
        FROM dns_flows
        ARRAY JOIN ips AS ip
        WHERE l7_type = 'RESPONSE'
          AND query IN ({destination:String}, concat({destination:String}, '.'))
          AND time >= {from:DateTime64(9, 'UTC')} - INTERVAL 1 DAY AND time < {until:DateTime64(9, 'UTC')}
    ) AS resolved_ips,
    (
        SELECT groupUniqArray(trimRight(query, '.'))
        FROM dns_flows
        WHERE l7_type = 'RESPONSE'
          AND has(ips, {destination:String})
          AND time >= {from:DateTime64(9, 'UTC')} - INTERVAL 1 DAY AND time < {until:DateTime64(9, 'UTC')}
    ) AS names_of_ip
SELECT
    source_namespace,
    source_workload,
    protocol,
    sumIf(flows, l7_type = 'REQUEST') AS requests,
    sumIf(flows, l7_type = 'RESPONSE') AS responses,
    min(time) AS first_seen,
    max(time) AS last_seen,
    arraySort(groupUniqArray(source_endpoint)) AS source_pods,
    arraySort(groupUniqArray(if(server_namespace = '', server_workload_name,
                                concat(server_namespace, '/', server_workload_name))))
        AS destinations
FROM
(
    -- On a response Hubble swaps the endpoints: the client is dst_*, the server src_*.
    SELECT
        protocol,
        time,
        l7_type,
        flows,
        if(l7_type = 'RESPONSE', dst_namespace, src_namespace) AS source_namespace,
        if(l7_type = 'RESPONSE', dst_workload_name, src_workload_name) AS source_workload,
        if(l7_type = 'RESPONSE', if(dst_pod = '', dst_workload_name, concat(dst_namespace, '/', dst_pod)),
                                 if(src_pod = '', src_workload_name, concat(src_namespace, '/', src_pod))) AS source_endpoint,
        if(l7_type = 'RESPONSE', src_namespace, dst_namespace) AS server_namespace,
        if(l7_type = 'RESPONSE', src_workload, dst_workload) AS server_workload,
        if(l7_type = 'RESPONSE', src_workload_name, dst_workload_name) AS server_workload_name,
        if(l7_type = 'RESPONSE', src_pod, dst_pod) AS server_pod,
        if(l7_type = 'RESPONSE', src_ip, dst_ip) AS server_ip,
        if(l7_type = 'RESPONSE', src_names, dst_names) AS server_names,
        host
    FROM
    (
        SELECT 'http' AS protocol, time, l7_type, greatest(aggregate_count, 1) AS flows, src_namespace,
               src_workload, src_workload_name, src_pod, src_ip, src_names, dst_namespace, dst_workload,
               dst_workload_name, dst_pod, dst_ip, dst_names, host
        FROM http_flows
        WHERE time >= {from:DateTime64(9, 'UTC')} AND time < {until:DateTime64(9, 'UTC')}
        UNION ALL
        SELECT 'dns' AS protocol, time, l7_type, greatest(aggregate_count, 1) AS flows, src_namespace,
               src_workload, src_workload_name, src_pod, src_ip, src_names, dst_namespace, dst_workload,
               dst_workload_name, dst_pod, dst_ip, dst_names, '' AS host
        FROM dns_flows
        WHERE time >= {from:DateTime64(9, 'UTC')} AND time < {until:DateTime64(9, 'UTC')}
    )
)
WHERE {destination:String} != ''
  AND (
        {destination:String} IN (server_workload, concat(server_namespace, '/', server_workload), server_workload_name,
                                 server_pod, concat(server_namespace, '/', server_pod), server_ip)
     OR has(server_names, {destination:String})
     OR has(server_names, trimRight({destination:String}, '.'))
     OR (host != '' AND {destination:String} IN (host, replaceRegexpOne(host, ':[0-9]+$', '')))
     OR (host != '' AND startsWith(concat(trimRight({destination:String}, '.'), '.'),
                                   concat(replaceRegexpOne(host, ':[0-9]+$', ''), '.', server_namespace, '.')))
     OR has(resolved_ips, server_ip)
     OR hasAny(server_names, names_of_ip)
     OR (host != '' AND arrayExists(name -> name = replaceRegexpOne(host, ':[0-9]+$', '')
                                             OR startsWith(concat(name, '.'), concat(replaceRegexpOne(host, ':[0-9]+$', ''),
                                                                                     '.', server_namespace, '.')),
                                    names_of_ip))
  )
GROUP BY source_namespace, source_workload, protocol
ORDER BY requests + responses DESC, source_namespace, source_workload, protocol
