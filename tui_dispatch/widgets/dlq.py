"""The dead-letter queue panel: one page of entries in a table, never the whole DLQ.

The DLQ may hold 100,000 entries. The panel only ever holds one page (``page_size`` rows),
fetched by the app through ``Source.dlq_list(offset, limit)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable

from engine import DeadLetter
from tui_dispatch.widgets._format import clip, count
from tui_dispatch.widgets._text import Titled

__all__ = ["PAGE_SIZE", "DlqPanel"]

PAGE_SIZE = 100
"""DLQ entries fetched and shown at a time."""

_ERROR_WIDTH = 50


class DlqPanel(Titled, Vertical):
    """A page of the DLQ in a :class:`DataTable`; the border shows where the page is.

    Attributes:
        page_offset: index of the first entry on the page.
        total: entries in the whole DLQ, as of the last page shown.
        entries: the entries on the page, in table order.
    """

    def __init__(self, *, page_size: int = PAGE_SIZE, id: str | None = None) -> None:
        super().__init__(id=id)
        self.page_size = page_size
        self.page_offset = 0
        self.total = 0
        self.entries: tuple[DeadLetter, ...] = ()
        self.table: DataTable[str] = DataTable(
            cursor_type="row", zebra_stripes=True, id="dlq-table"
        )
        """The table widget."""

    def compose(self) -> ComposeResult:
        yield self.table

    def on_mount(self) -> None:
        self._ensure_columns()
        self._show_position()

    def _ensure_columns(self) -> None:
        if not self.table.columns:  # added once the app is running: DataTable measures them
            for column in ("job", "name", "tries", "error", "reason"):
                self.table.add_column(column, key=column)

    @property
    def selected(self) -> DeadLetter | None:
        """The entry under the cursor, or ``None`` when the page is empty."""
        row = self.table.cursor_row
        if not self.entries or not 0 <= row < len(self.entries):
            return None
        return self.entries[row]

    def show_page(self, offset: int, entries: Sequence[DeadLetter], total: int) -> None:
        """Show one page (UI thread only). The cursor stays on the same row number."""
        self._ensure_columns()
        table = self.table
        row = table.cursor_row
        new = tuple(entries)
        if new != self.entries:
            table.clear()
            table.add_rows(
                (
                    f"#{e.job_id}",
                    clip(e.name, 24),
                    str(e.attempts),
                    clip(f"{e.exc_type}: {e.exc_message}", _ERROR_WIDTH),
                    e.reason,
                )
                for e in new
            )
            if new:
                table.move_cursor(row=min(max(row, 0), len(new) - 1), animate=False)
        self.page_offset, self.total, self.entries = offset, total, new
        self._show_position()

    def _show_position(self) -> None:
        if self.total:
            last = self.page_offset + len(self.entries)
            self.set_titles(
                f"Dead letters {count(self.total)} · {count(self.page_offset + 1)}\u2013{count(last)}",
                "⏎ detail · r requeue · R all · d delete · X purge · \\[ ] page",
            )
        else:
            self.set_titles("Dead letters", "empty")
