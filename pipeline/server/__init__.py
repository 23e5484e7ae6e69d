"""The local MemOS-compatible server: the app (`app`), its store (`store`), fault injection
(`faults`) and how it runs (`runner`). Import what you need from here."""

from pipeline.server.app import (
    ENDPOINTS,
    ForcedAnswer,
    ServerConfig,
    ServerLimits,
)
from pipeline.server.embedded import EmbeddedServer
from pipeline.server.runner import LocalServer, run_until_signal, start_server

__all__ = [
    "ENDPOINTS",
    "EmbeddedServer",
    "ForcedAnswer",
    "LocalServer",
    "ServerConfig",
    "ServerLimits",
    "run_until_signal",
    "start_server",
]
