-- ingest_completeness: per node and hour, what was stored versus lost and quarantined
--
-- From ingest_ledger (one row per committed batch and node; a batch counts in the hour of its
-- oldest flow) and ingest_gaps (in the hour the gap was reported). received: L7 flows received;
-- stored: L7 flows stored by that batch; duplicates: received but already stored; filtered: non-L7
-- flows, not stored by design; quarantined: input written to the dead-letter file (node '' when
-- the input named none); lost: events Hubble reported lost (lost_events gaps); interruptions:
-- stream interruptions; node_events: Relay node status changes; spool_batches_lost: spooled
-- batches that could not be read back (spool_unreadable gaps, node '', in the hour the file was
-- written): their flows are not stored and how many there were is unknown. stored_twice: rows
-- of l7_audit (which holds every stored flow) beyond the first with the same flow_id, in the
-- hour of the flow, read from the table itself, not the ledger: 0 unless a flow was stored more
-- than once.
-- complete_pct = 100 * (received - duplicates) / (received - duplicates + lost + quarantined):
-- flows received again (a reconnect re-reads a window) count once; 100 when all are 0. It
-- cannot count the flows of lost spool batches.
--
-- param: from DateTime64(9, 'UTC') (required) start of the time range, inclusive
-- param: until DateTime64(9, 'UTC') (required) end of the time range, exclusive
-- columns: hour, node, received, stored, stored_http, stored_dns, duplicates, filtered, quarantined, lost
-- columns: interruptions, node_events, spool_batches_lost, stored_twice, complete_pct
SELECT
    hour,
    node,
    received,
    stored,
    stored_http,
    stored_dns,
    duplicates,
    filtered,
    quarantined,
    lost,
    interruptions,
    node_events,
    spool_batches_lost,
    stored_twice,
    if(received - duplicates + lost + quarantined = 0, 100,
       round(100 * (received - duplicates) / (received - duplicates + lost + quarantined), 2)) AS complete_pct
FROM
(
    SELECT
        toStartOfHour(toDateTime(time, 'UTC')) AS hour,
        toString(node) AS node,
        sum(received) AS received,
        sum(stored_audit) AS stored,
        sum(stored_http) AS stored_http,
        sum(stored_dns) AS stored_dns,
        sum(duplicates) AS duplicates,
        sum(filtered) AS filtered,
        sum(quarantined) AS quarantined
    FROM ingest_ledger
    WHERE time >= {from:DateTime64(9, 'UTC')} AND time < {until:DateTime64(9, 'UTC')}
    GROUP BY hour, node
) AS ledger
FULL OUTER JOIN
(
    SELECT
        toStartOfHour(toDateTime(time, 'UTC')) AS hour,
        toString(node) AS node,
        sumIf(count, kind = 'lost_events') AS lost,
        countIf(kind = 'stream_interrupted') AS interruptions,
        countIf(kind = 'node_status') AS node_events,
        countIf(kind = 'spool_unreadable') AS spool_batches_lost
    FROM ingest_gaps
    WHERE time >= {from:DateTime64(9, 'UTC')} AND time < {until:DateTime64(9, 'UTC')}
    GROUP BY hour, node
) AS gaps USING (hour, node)
FULL OUTER JOIN
(
    -- Grouped by l7_audit's sort key, so ClickHouse counts each id as it reads them in
    -- order, holding one at a time instead of every id of the range.
    SELECT toStartOfHour(toDateTime(hour, 'UTC')) AS hour, toString(node) AS node, sum(copies - 1) AS stored_twice
    FROM
    (
        SELECT toStartOfHour(time) AS hour, node, flow_id, count() AS copies
        FROM l7_audit
        WHERE time >= {from:DateTime64(9, 'UTC')} AND time < {until:DateTime64(9, 'UTC')}
        GROUP BY hour, node, flow_id
        HAVING copies > 1
    )
    GROUP BY hour, node
) AS stored USING (hour, node)
ORDER BY hour, node
SETTINGS optimize_aggregation_in_order = 1
