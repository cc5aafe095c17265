"""hubble-flowlog: keeps Cilium Hubble's L7 flows (HTTP, DNS) in ClickHouse.

The data path, one module per stage: `sources/` (gRPC `hubble`, `files` for
backfill) -> `decode` (a flow to rows) -> `pipeline` (batching, backpressure) ->
`sink` (inserts, retries) with `checkpoint` and `deadletter` beside it. `schema`
defines every table once; `metrics` holds the ingester's own metrics.
"""

__version__ = "0.1.0"
