"""A cache registry: bundles (cache/bundle.py) behind one fsspec URL (file://, s3://, gs://, hf://), found by the
fingerprint that enters their disk keys and by the units they hold. `store` speaks to the storage, `index` holds
the records, `select` picks the bundle for a machine (pure), `machine` says what this machine is, `publish` and
`fetch` move bundles, `pull` fetches at pod start when the local cache is missing or stale."""
