"""Engines: the same load code run bucket by bucket, in this process or on a Ray cluster.

`memos-etl run` delivers through one loader by default (`pipeline.run`, the embedded path).
`run --engine inprocess|ray` splits each account's batches by conversation bucket
(`pipeline.core.buckets.bucket_of`) and delivers every (destination, bucket) slice as a
unit with its own ledger, all slices of an account sharing its budget:

- `slices`: what a unit is and does (plan the slices, load one), shared by both engines;
- `inprocess`: every slice of an account concurrently on one asyncio loop, one limiter;
- `ray_engine`: one Ray task per slice, one budget actor per account (extra `memos-etl[ray]`).
"""
