"""Where flows come from: `hubble` (gRPC, live) and `files` (backfill). Both decode with
`ingest.decode` and hand `pipeline.Entry`s to the pipeline."""
