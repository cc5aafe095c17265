"""What a message becomes: `decoder` turns a Hubble `GetFlowsResponse` into rows filled by
column name (with `dnscache` naming servers outside the cluster), and `dispatch` hands
every message a source reads to the batcher as entries, dead-lettering what cannot be
stored."""
