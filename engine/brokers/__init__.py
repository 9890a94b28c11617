"""The broker seam: where jobs wait (backlog), wait again (retry schedule) and end up (DLQ)."""

from __future__ import annotations

from engine.brokers.base import Broker, SharedBroker
from engine.brokers.memory import MemoryBroker

__all__ = ["Broker", "MemoryBroker", "SharedBroker"]
