-- Migration 0010_flow_input: an input table the flows can be sent to as protobuf, from which ClickHouse derives l7_audit, http_flows and dns_flows (store.derive = store).
-- Generated from ingest/store/ by
-- `flowlog migrate --write-sql`; do not edit. ${database}, ${ttl_days} and
-- ${rollup_ttl_days} are filled in from the config when `flowlog migrate` applies it.

CREATE TABLE IF NOT EXISTS `${database}`.`flow_input`
(
    `flow` Tuple(verdict Int32, IP Tuple(source String, destination String), l4 Tuple(TCP Tuple(source_port UInt32, destination_port UInt32), UDP Tuple(source_port UInt32, destination_port UInt32), SCTP Tuple(source_port UInt32, destination_port UInt32)), source Tuple(identity UInt32, namespace String, labels Array(String), pod_name String, workloads Array(Tuple(name String))), destination Tuple(identity UInt32, namespace String, labels Array(String), pod_name String, workloads Array(Tuple(name String))), l7 Tuple(type Int32, latency_ns UInt64, dns Tuple(query String, ips Array(String), ttl UInt32, cnames Array(String), observation_source String, rcode UInt32, qtypes Array(String), rrtypes Array(String)), http Tuple(code UInt32, method String, protocol String)), traffic_direction Int32, source_names Array(String), destination_names Array(String)),
    `flow_bytes` String,
    `time` Int64 COMMENT 'the flow\'s time in ns (the response\'s when the flow has none)',
    `node` String,
    `flow_id` String COMMENT 'the flow tables\' id: a UUID\'s text or 32 hex digits',
    `audit_id` String COMMENT 'l7_audit\'s id: Hubble\'s uuid as it came, else the content hash',
    `type` String COMMENT 'HTTP, DNS, KAFKA or empty',
    `l7_type` String,
    `aggregate_count` UInt32,
    `is_reply` UInt8,
    `url` String,
    `host` String,
    `header_names` Array(String),
    `header_values` Array(String),
    `dst_dns_name` String
)
ENGINE = Null
COMMENT 'Received L7 flows on their way to l7_audit, http_flows and dns_flows (Null engine: holds nothing)';

CREATE MATERIALIZED VIEW IF NOT EXISTS `${database}`.`l7_audit_from_input` TO `${database}`.`l7_audit`
AS SELECT
    fromUnixTimestamp64Nano(time, 'UTC') AS `time`,
    node AS `node`,
    audit_id AS `flow_id`,
    type AS `type`,
    l7_type AS `l7_type`,
    flow_bytes AS `flow`,
    aggregate_count AS `aggregate_count`
FROM `${database}`.`flow_input`;

CREATE MATERIALIZED VIEW IF NOT EXISTS `${database}`.`http_flows_from_input` TO `${database}`.`http_flows`
AS SELECT
    fromUnixTimestamp64Nano(time, 'UTC') AS `time`,
    node AS `node`,
    toUUID(flow_id) AS `flow_id`,
    transform(flow.verdict, [0, 1, 2, 3, 4, 5, 6, 7], ['VERDICT_UNKNOWN', 'FORWARDED', 'DROPPED', 'ERROR', 'AUDIT', 'REDIRECTED', 'TRACED', 'TRANSLATED'], toString(flow.verdict)) AS `verdict`,
    l7_type AS `l7_type`,
    transform(flow.traffic_direction, [0, 1, 2], ['TRAFFIC_DIRECTION_UNKNOWN', 'INGRESS', 'EGRESS'], toString(flow.traffic_direction)) AS `traffic_direction`,
    if(is_reply = 0, NULL, is_reply = 2) AS `is_reply`,
    flow.source.namespace AS `src_namespace`,
    flow.source.pod_name AS `src_pod`,
    multiIf(notEmpty(flow.source.workloads), flow.source.workloads[1].name, match(flow.source.pod_name, '^(.+)-[bcdfghjklmnpqrstvwxz2456789]{6,10}-[bcdfghjklmnpqrstvwxz2456789]{5}$'), extract(flow.source.pod_name, '^(.+)-[bcdfghjklmnpqrstvwxz2456789]{6,10}-[bcdfghjklmnpqrstvwxz2456789]{5}$'), match(flow.source.pod_name, '^(.+)-[bcdfghjklmnpqrstvwxz2456789]{5}$'), extract(flow.source.pod_name, '^(.+)-[bcdfghjklmnpqrstvwxz2456789]{5}$'), match(flow.source.pod_name, '^(.+)-[0-9]+$'), extract(flow.source.pod_name, '^(.+)-[0-9]+$'), flow.source.pod_name != '', flow.source.pod_name, startsWith(arrayFirst(l -> startsWith(l, 'k8s:app.kubernetes.io/name=') OR startsWith(l, 'k8s:app=') OR startsWith(l, 'k8s:k8s-app='), flow.source.labels), 'k8s:app.kubernetes.io/name='), substring(arrayFirst(l -> startsWith(l, 'k8s:app.kubernetes.io/name=') OR startsWith(l, 'k8s:app=') OR startsWith(l, 'k8s:k8s-app='), flow.source.labels), 28), startsWith(arrayFirst(l -> startsWith(l, 'k8s:app.kubernetes.io/name=') OR startsWith(l, 'k8s:app=') OR startsWith(l, 'k8s:k8s-app='), flow.source.labels), 'k8s:app='), substring(arrayFirst(l -> startsWith(l, 'k8s:app.kubernetes.io/name=') OR startsWith(l, 'k8s:app=') OR startsWith(l, 'k8s:k8s-app='), flow.source.labels), 9), startsWith(arrayFirst(l -> startsWith(l, 'k8s:app.kubernetes.io/name=') OR startsWith(l, 'k8s:app=') OR startsWith(l, 'k8s:k8s-app='), flow.source.labels), 'k8s:k8s-app='), substring(arrayFirst(l -> startsWith(l, 'k8s:app.kubernetes.io/name=') OR startsWith(l, 'k8s:app=') OR startsWith(l, 'k8s:k8s-app='), flow.source.labels), 13), '') AS `src_workload`,
    flow.source.identity AS `src_identity`,
    flow.IP.source AS `src_ip`,
    toUInt16(flow.l4.TCP.source_port + flow.l4.UDP.source_port + flow.l4.SCTP.source_port) AS `src_port`,
    flow.source.labels AS `src_labels`,
    flow.source_names AS `src_names`,
    flow.destination.namespace AS `dst_namespace`,
    flow.destination.pod_name AS `dst_pod`,
    multiIf(notEmpty(flow.destination.workloads), flow.destination.workloads[1].name, match(flow.destination.pod_name, '^(.+)-[bcdfghjklmnpqrstvwxz2456789]{6,10}-[bcdfghjklmnpqrstvwxz2456789]{5}$'), extract(flow.destination.pod_name, '^(.+)-[bcdfghjklmnpqrstvwxz2456789]{6,10}-[bcdfghjklmnpqrstvwxz2456789]{5}$'), match(flow.destination.pod_name, '^(.+)-[bcdfghjklmnpqrstvwxz2456789]{5}$'), extract(flow.destination.pod_name, '^(.+)-[bcdfghjklmnpqrstvwxz2456789]{5}$'), match(flow.destination.pod_name, '^(.+)-[0-9]+$'), extract(flow.destination.pod_name, '^(.+)-[0-9]+$'), flow.destination.pod_name != '', flow.destination.pod_name, startsWith(arrayFirst(l -> startsWith(l, 'k8s:app.kubernetes.io/name=') OR startsWith(l, 'k8s:app=') OR startsWith(l, 'k8s:k8s-app='), flow.destination.labels), 'k8s:app.kubernetes.io/name='), substring(arrayFirst(l -> startsWith(l, 'k8s:app.kubernetes.io/name=') OR startsWith(l, 'k8s:app=') OR startsWith(l, 'k8s:k8s-app='), flow.destination.labels), 28), startsWith(arrayFirst(l -> startsWith(l, 'k8s:app.kubernetes.io/name=') OR startsWith(l, 'k8s:app=') OR startsWith(l, 'k8s:k8s-app='), flow.destination.labels), 'k8s:app='), substring(arrayFirst(l -> startsWith(l, 'k8s:app.kubernetes.io/name=') OR startsWith(l, 'k8s:app=') OR startsWith(l, 'k8s:k8s-app='), flow.destination.labels), 9), startsWith(arrayFirst(l -> startsWith(l, 'k8s:app.kubernetes.io/name=') OR startsWith(l, 'k8s:app=') OR startsWith(l, 'k8s:k8s-app='), flow.destination.labels), 'k8s:k8s-app='), substring(arrayFirst(l -> startsWith(l, 'k8s:app.kubernetes.io/name=') OR startsWith(l, 'k8s:app=') OR startsWith(l, 'k8s:k8s-app='), flow.destination.labels), 13), '') AS `dst_workload`,
    flow.destination.identity AS `dst_identity`,
    flow.IP.destination AS `dst_ip`,
    toUInt16(flow.l4.TCP.destination_port + flow.l4.UDP.destination_port + flow.l4.SCTP.destination_port) AS `dst_port`,
    flow.destination.labels AS `dst_labels`,
    flow.destination_names AS `dst_names`,
    flow.l7.http.method AS `method`,
    url AS `url`,
    host AS `host`,
    flow.l7.http.protocol AS `protocol`,
    toUInt16(flow.l7.http.code) AS `status_code`,
    flow.l7.latency_ns AS `latency_ns`,
    mapFromArrays(header_names, header_values) AS `headers`,
    dst_dns_name AS `dst_dns_name`,
    aggregate_count AS `aggregate_count`
FROM `${database}`.`flow_input`
WHERE type = 'HTTP';

CREATE MATERIALIZED VIEW IF NOT EXISTS `${database}`.`dns_flows_from_input` TO `${database}`.`dns_flows`
AS SELECT
    fromUnixTimestamp64Nano(time, 'UTC') AS `time`,
    node AS `node`,
    toUUID(flow_id) AS `flow_id`,
    transform(flow.verdict, [0, 1, 2, 3, 4, 5, 6, 7], ['VERDICT_UNKNOWN', 'FORWARDED', 'DROPPED', 'ERROR', 'AUDIT', 'REDIRECTED', 'TRACED', 'TRANSLATED'], toString(flow.verdict)) AS `verdict`,
    l7_type AS `l7_type`,
    transform(flow.traffic_direction, [0, 1, 2], ['TRAFFIC_DIRECTION_UNKNOWN', 'INGRESS', 'EGRESS'], toString(flow.traffic_direction)) AS `traffic_direction`,
    if(is_reply = 0, NULL, is_reply = 2) AS `is_reply`,
    flow.source.namespace AS `src_namespace`,
    flow.source.pod_name AS `src_pod`,
    multiIf(notEmpty(flow.source.workloads), flow.source.workloads[1].name, match(flow.source.pod_name, '^(.+)-[bcdfghjklmnpqrstvwxz2456789]{6,10}-[bcdfghjklmnpqrstvwxz2456789]{5}$'), extract(flow.source.pod_name, '^(.+)-[bcdfghjklmnpqrstvwxz2456789]{6,10}-[bcdfghjklmnpqrstvwxz2456789]{5}$'), match(flow.source.pod_name, '^(.+)-[bcdfghjklmnpqrstvwxz2456789]{5}$'), extract(flow.source.pod_name, '^(.+)-[bcdfghjklmnpqrstvwxz2456789]{5}$'), match(flow.source.pod_name, '^(.+)-[0-9]+$'), extract(flow.source.pod_name, '^(.+)-[0-9]+$'), flow.source.pod_name != '', flow.source.pod_name, startsWith(arrayFirst(l -> startsWith(l, 'k8s:app.kubernetes.io/name=') OR startsWith(l, 'k8s:app=') OR startsWith(l, 'k8s:k8s-app='), flow.source.labels), 'k8s:app.kubernetes.io/name='), substring(arrayFirst(l -> startsWith(l, 'k8s:app.kubernetes.io/name=') OR startsWith(l, 'k8s:app=') OR startsWith(l, 'k8s:k8s-app='), flow.source.labels), 28), startsWith(arrayFirst(l -> startsWith(l, 'k8s:app.kubernetes.io/name=') OR startsWith(l, 'k8s:app=') OR startsWith(l, 'k8s:k8s-app='), flow.source.labels), 'k8s:app='), substring(arrayFirst(l -> startsWith(l, 'k8s:app.kubernetes.io/name=') OR startsWith(l, 'k8s:app=') OR startsWith(l, 'k8s:k8s-app='), flow.source.labels), 9), startsWith(arrayFirst(l -> startsWith(l, 'k8s:app.kubernetes.io/name=') OR startsWith(l, 'k8s:app=') OR startsWith(l, 'k8s:k8s-app='), flow.source.labels), 'k8s:k8s-app='), substring(arrayFirst(l -> startsWith(l, 'k8s:app.kubernetes.io/name=') OR startsWith(l, 'k8s:app=') OR startsWith(l, 'k8s:k8s-app='), flow.source.labels), 13), '') AS `src_workload`,
    flow.source.identity AS `src_identity`,
    flow.IP.source AS `src_ip`,
    toUInt16(flow.l4.TCP.source_port + flow.l4.UDP.source_port + flow.l4.SCTP.source_port) AS `src_port`,
    flow.source.labels AS `src_labels`,
    flow.source_names AS `src_names`,
    flow.destination.namespace AS `dst_namespace`,
    flow.destination.pod_name AS `dst_pod`,
    multiIf(notEmpty(flow.destination.workloads), flow.destination.workloads[1].name, match(flow.destination.pod_name, '^(.+)-[bcdfghjklmnpqrstvwxz2456789]{6,10}-[bcdfghjklmnpqrstvwxz2456789]{5}$'), extract(flow.destination.pod_name, '^(.+)-[bcdfghjklmnpqrstvwxz2456789]{6,10}-[bcdfghjklmnpqrstvwxz2456789]{5}$'), match(flow.destination.pod_name, '^(.+)-[bcdfghjklmnpqrstvwxz2456789]{5}$'), extract(flow.destination.pod_name, '^(.+)-[bcdfghjklmnpqrstvwxz2456789]{5}$'), match(flow.destination.pod_name, '^(.+)-[0-9]+$'), extract(flow.destination.pod_name, '^(.+)-[0-9]+$'), flow.destination.pod_name != '', flow.destination.pod_name, startsWith(arrayFirst(l -> startsWith(l, 'k8s:app.kubernetes.io/name=') OR startsWith(l, 'k8s:app=') OR startsWith(l, 'k8s:k8s-app='), flow.destination.labels), 'k8s:app.kubernetes.io/name='), substring(arrayFirst(l -> startsWith(l, 'k8s:app.kubernetes.io/name=') OR startsWith(l, 'k8s:app=') OR startsWith(l, 'k8s:k8s-app='), flow.destination.labels), 28), startsWith(arrayFirst(l -> startsWith(l, 'k8s:app.kubernetes.io/name=') OR startsWith(l, 'k8s:app=') OR startsWith(l, 'k8s:k8s-app='), flow.destination.labels), 'k8s:app='), substring(arrayFirst(l -> startsWith(l, 'k8s:app.kubernetes.io/name=') OR startsWith(l, 'k8s:app=') OR startsWith(l, 'k8s:k8s-app='), flow.destination.labels), 9), startsWith(arrayFirst(l -> startsWith(l, 'k8s:app.kubernetes.io/name=') OR startsWith(l, 'k8s:app=') OR startsWith(l, 'k8s:k8s-app='), flow.destination.labels), 'k8s:k8s-app='), substring(arrayFirst(l -> startsWith(l, 'k8s:app.kubernetes.io/name=') OR startsWith(l, 'k8s:app=') OR startsWith(l, 'k8s:k8s-app='), flow.destination.labels), 13), '') AS `dst_workload`,
    flow.destination.identity AS `dst_identity`,
    flow.IP.destination AS `dst_ip`,
    toUInt16(flow.l4.TCP.destination_port + flow.l4.UDP.destination_port + flow.l4.SCTP.destination_port) AS `dst_port`,
    flow.destination.labels AS `dst_labels`,
    flow.destination_names AS `dst_names`,
    flow.l7.dns.query AS `query`,
    flow.l7.dns.qtypes AS `qtypes`,
    toUInt16(flow.l7.dns.rcode) AS `rcode`,
    if(flow.l7.type = 2, transform(flow.l7.dns.rcode, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 16, 17, 18, 19, 20, 21, 22, 23], ['NOERROR', 'FORMERR', 'SERVFAIL', 'NXDOMAIN', 'NOTIMP', 'REFUSED', 'YXDOMAIN', 'YXRRSET', 'NXRRSET', 'NOTAUTH', 'NOTZONE', 'DSOTYPENI', 'BADVERS', 'BADKEY', 'BADTIME', 'BADMODE', 'BADNAME', 'BADALG', 'BADTRUNC', 'BADCOOKIE'], concat('RCODE', toString(flow.l7.dns.rcode))), '') AS `rcode_name`,
    flow.l7.dns.ips AS `ips`,
    flow.l7.dns.ttl AS `ttl`,
    flow.l7.dns.cnames AS `cnames`,
    flow.l7.dns.rrtypes AS `rrtypes`,
    flow.l7.dns.observation_source AS `observation_source`,
    flow.l7.latency_ns AS `latency_ns`,
    aggregate_count AS `aggregate_count`
FROM `${database}`.`flow_input`
WHERE type = 'DNS';
