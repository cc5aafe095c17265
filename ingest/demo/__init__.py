"""`flowlog demo`: `command` runs the real ingester against `observer`, an in-process
Hubble stand-in (also used by the tests), serving `traffic`, a generated cluster's flows."""
