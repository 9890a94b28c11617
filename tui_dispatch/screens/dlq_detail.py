"""The full detail of one dead-lettered job, with its traceback."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import ClassVar, Literal

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.markup import escape
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from engine import DeadLetter

__all__ = ["DetailChoice", "DlqDetailScreen"]

DetailChoice = Literal["requeue", "delete"] | None
"""What the user chose on the detail screen: requeue, delete, or nothing (closed it)."""


def _when(wall_s: float) -> str:
    return datetime.fromtimestamp(wall_s, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class DlqDetailScreen(ModalScreen[DetailChoice]):
    """One DLQ entry in full. Dismisses with the chosen action; the app carries it out.

    Args:
        entry: the entry to show.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "choose(None)", "Close"),
        Binding("r", "choose('requeue')", "Requeue"),
        Binding("d,delete", "choose('delete')", "Delete"),
    ]

    def __init__(self, entry: DeadLetter) -> None:
        super().__init__()
        self.entry = entry

    def compose(self) -> ComposeResult:
        e = self.entry
        with Vertical(id="detail"):
            yield Label(
                f"[b]job #{e.job_id}[/b] · {escape(e.name)}"
                + (f" · task [b]{escape(e.task)}[/b]" if e.task else ""),
                id="detail-title",
            )
            yield Label(
                f"[$text-error][b]{escape(e.exc_type)}[/b][/]: {escape(e.exc_message)}",
                id="detail-error",
            )
            yield Label(
                f"{e.attempts} attempts · {escape(e.reason)}\n"
                f"first failure {_when(e.first_failure_at)} · last {_when(e.last_failure_at)}\n"
                f"args {escape(e.args_repr)}",
                id="detail-facts",
            )
            with VerticalScroll(id="traceback-box"):
                yield Static(Text(e.traceback.rstrip("\n") or "(no traceback)"), id="traceback")
            with Horizontal(id="detail-buttons"):
                yield Button("Requeue (r)", variant="primary", id="requeue")
                yield Button("Delete (d)", variant="error", id="delete")
                yield Button("Close (esc)", id="close")

    def on_mount(self) -> None:
        self.query_one("#detail", Vertical).border_title = "Dead letter"
        self.query_one("#traceback-box", VerticalScroll).border_title = "Traceback"
        self.query_one("#traceback-box", VerticalScroll).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        choice: DetailChoice = None
        if event.button.id == "requeue":
            choice = "requeue"
        elif event.button.id == "delete":
            choice = "delete"
        self.dismiss(choice)

    def action_choose(self, choice: DetailChoice) -> None:
        self.dismiss(choice)
