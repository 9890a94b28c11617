"""The dashboard's panels. Each one shows a part of an :class:`engine.Snapshot`."""

from __future__ import annotations

from tui_dispatch.widgets.dlq import PAGE_SIZE, DlqPanel
from tui_dispatch.widgets.event_log import EventLog, LogFeed
from tui_dispatch.widgets.header import EngineHeader
from tui_dispatch.widgets.stats import History, QueuePanel, RetriesPanel, ThroughputPanel
from tui_dispatch.widgets.workers import WorkerList, WorkersPanel

__all__ = [
    "PAGE_SIZE",
    "DlqPanel",
    "EngineHeader",
    "EventLog",
    "History",
    "LogFeed",
    "QueuePanel",
    "RetriesPanel",
    "ThroughputPanel",
    "WorkerList",
    "WorkersPanel",
]
