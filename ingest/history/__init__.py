"""The history server: Hubble's observer.Observer API over the stored flows.

`filters` is Hubble's flow filters (pure), `query` the SQL that pushes their selective
parts down to the store (pure), `reader` the store as the server reads it (I/O),
`stream` GetFlows' semantics over them, `server` the gRPC service and health, `command`
`flowlog serve`; `observe` and `printer` are `flowlog observe`, a client for people
without the hubble CLI.
"""
