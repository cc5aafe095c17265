"""Where flows come from: `hubble` (follows `Observer.GetFlows`, live) and `files` (backfill
from JSON Lines, with `jsonpb` to parse them). A source reads messages within a
`pipeline.records.Window` and hands each to the dispatcher (`decode.dispatch`); it does
not decode."""
