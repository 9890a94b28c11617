"""The dashboard's modal screens."""

from __future__ import annotations

from tui_dispatch.screens.confirm import ConfirmScreen
from tui_dispatch.screens.dlq_detail import DetailChoice, DlqDetailScreen
from tui_dispatch.screens.help import HelpScreen

__all__ = ["ConfirmScreen", "DetailChoice", "DlqDetailScreen", "HelpScreen"]
