"""hubble-flowlog: keeps Cilium Hubble's L7 flows (HTTP, DNS) in ClickHouse.

The path of a flow, one folder per role: `sources/` (gRPC `hubble`, `files` for
backfill) -> `decode/` (a message to rows, and the dispatcher that hands them on) ->
`pipeline/` (`records` between the stages, `batching`, `spool`, `sink`, `ledger`,
`checkpoint`, `deadletters`) -> `store/` (`schema`, `migrations`, `connection`, named
`queries`), with `metrics/` watching. `runner` is the one module that wires the stages
together; `cli` is the command line, `demo/` the newcomer's first command, `visibility/`
the L7 policy that makes Hubble see the traffic.
"""

__version__ = "0.1.0"
