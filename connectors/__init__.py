"""Source connectors: each turns one export into `pipeline.core.models` events.

The registry lives in `connectors.base`; this package imports nothing itself, so worker
processes that only need one connector's worker module start without pydantic.
"""
