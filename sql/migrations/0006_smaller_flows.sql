-- Migration 0006_smaller_flows: smaller flow tables: flow_id a UUID, path and query computed from url, stronger codecs.
-- Generated from ingest/store/ by
-- `flowlog migrate --write-sql`; do not edit. ${database}, ${ttl_days} and
-- ${rollup_ttl_days} are filled in from the config when `flowlog migrate` applies it.

ALTER TABLE `${database}`.`http_flows` UPDATE flow_id = lower(hex(MD5(toString(flow_id)))) WHERE toUUIDOrNull(toString(flow_id)) IS NULL SETTINGS mutations_sync = 2;

ALTER TABLE `${database}`.`http_flows` MODIFY COLUMN `flow_id` UUID CODEC(ZSTD(1)) COMMENT 'Hubble\'s uuid, else a hash of the flow content; l7_audit.flow_id is its text as it came (a content hash as 32 hex digits; an id that is no UUID is held here as its MD5)';

ALTER TABLE `${database}`.`http_flows` MODIFY COLUMN `src_ip` String CODEC(ZSTD(3)) COMMENT 'IP address of the source';

ALTER TABLE `${database}`.`http_flows` MODIFY COLUMN `src_port` UInt16 CODEC(T64, ZSTD(1)) COMMENT 'L4 port of the source';

ALTER TABLE `${database}`.`http_flows` MODIFY COLUMN `dst_ip` String CODEC(ZSTD(3)) COMMENT 'IP address of the destination';

ALTER TABLE `${database}`.`http_flows` MODIFY COLUMN `dst_port` UInt16 CODEC(T64, ZSTD(1)) COMMENT 'L4 port of the destination';

ALTER TABLE `${database}`.`http_flows` MODIFY COLUMN `url` String CODEC(ZSTD(9)) COMMENT 'full URL as Hubble reported it (userinfo stripped)';

ALTER TABLE `${database}`.`http_flows` DROP COLUMN IF EXISTS `path`;

ALTER TABLE `${database}`.`http_flows` ADD COLUMN IF NOT EXISTS `path` String ALIAS path(url) COMMENT 'path of the URL (computed)' AFTER `host`;

ALTER TABLE `${database}`.`http_flows` DROP COLUMN IF EXISTS `query`;

ALTER TABLE `${database}`.`http_flows` ADD COLUMN IF NOT EXISTS `query` String ALIAS queryString(url) COMMENT 'query string of the URL, without the ? (computed)' AFTER `path`;

ALTER TABLE `${database}`.`http_flows` MODIFY COLUMN `headers` Map(LowCardinality(String), String) CODEC(ZSTD(9)) COMMENT 'allow-listed headers, sensitive values redacted';

ALTER TABLE `${database}`.`dns_flows` UPDATE flow_id = lower(hex(MD5(toString(flow_id)))) WHERE toUUIDOrNull(toString(flow_id)) IS NULL SETTINGS mutations_sync = 2;

ALTER TABLE `${database}`.`dns_flows` MODIFY COLUMN `flow_id` UUID CODEC(ZSTD(1)) COMMENT 'Hubble\'s uuid, else a hash of the flow content; l7_audit.flow_id is its text as it came (a content hash as 32 hex digits; an id that is no UUID is held here as its MD5)';

ALTER TABLE `${database}`.`dns_flows` MODIFY COLUMN `src_ip` String CODEC(ZSTD(3)) COMMENT 'IP address of the source';

ALTER TABLE `${database}`.`dns_flows` MODIFY COLUMN `src_port` UInt16 CODEC(T64, ZSTD(1)) COMMENT 'L4 port of the source';

ALTER TABLE `${database}`.`dns_flows` MODIFY COLUMN `dst_ip` String CODEC(ZSTD(3)) COMMENT 'IP address of the destination';

ALTER TABLE `${database}`.`dns_flows` MODIFY COLUMN `dst_port` UInt16 CODEC(T64, ZSTD(1)) COMMENT 'L4 port of the destination';
