"""From decoded rows to stored rows: `records` (what passes between the stages),
`batching` (the inbox and the batching loop), `spool` (the durable queue; `spoolfile` its
format), `sink` (lookups, inserts, retries), `ledger` (the books of each batch),
`checkpoint` (where a source resumes), `deadletters` (input that could not be stored).
The stages import `records`, never each other; `runner` connects them."""
