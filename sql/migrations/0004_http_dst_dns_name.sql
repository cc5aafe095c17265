-- Migration 0004_http_dst_dns_name: the DNS name a client resolved for a server outside the cluster.
-- Generated from ingest/store/ by
-- `flowlog migrate --write-sql`; do not edit. ${database}, ${ttl_days} and
-- ${rollup_ttl_days} are filled in from the config when `flowlog migrate` applies it.

ALTER TABLE `${database}`.`http_flows` ADD COLUMN IF NOT EXISTS `dst_dns_name` LowCardinality(String) COMMENT 'DNS name of the server of the exchange (the request destination): Hubble\'s, else for a server with no pod the name the client pod last resolved to its IP';
