"""The ClickHouse store: `schema` (every table and column, as they are now), `migrations`
(how each version changed them, and applying that), `connection` (a client for a server
or the embedded engine) and `queries` (the named queries in `sql/queries/`). It knows
nothing of flows arriving; the pipeline writes through it."""
