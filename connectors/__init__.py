"""Source connectors: each turns one export into `pipeline.models` events."""

from connectors.base import Connector, ConnectorOptions, get_connector, known_sources

__all__ = ["Connector", "ConnectorOptions", "get_connector", "known_sources"]
