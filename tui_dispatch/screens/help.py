"""The ``?`` help screen: every key, generated from the app's own command table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable

__all__ = ["HelpScreen"]


class HelpScreen(ModalScreen[None]):
    """A table of keys and what they do.

    Args:
        rows: ``(keys, what it does)`` pairs, in the order to show them.
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,question_mark,q", "close", "Close")]

    def __init__(self, rows: Sequence[tuple[str, str]]) -> None:
        super().__init__()
        self.rows = tuple(rows)

    def compose(self) -> ComposeResult:
        with Vertical(id="help"):
            table: DataTable[str] = DataTable(
                cursor_type="none", zebra_stripes=True, show_header=False, id="help-table"
            )
            table.add_columns("key", "does")
            table.add_rows(self.rows)
            yield table

    def on_mount(self) -> None:
        box = self.query_one("#help", Vertical)
        box.border_title = "Keys"
        box.border_subtitle = "esc closes · the mouse works too"

    def action_close(self) -> None:
        self.dismiss(None)
