"""A text widget that costs nothing when its text is unchanged, and little when only digits move."""

from __future__ import annotations

from textual.content import Content
from textual.widget import Widget
from textual.widgets import Static

__all__ = ["LiveText", "Titled"]


class LiveText(Static):
    """A :class:`Static` showing markup, updated with :meth:`show`.

    The dashboard rewrites its figures several times a second. Unchanged markup costs nothing.
    New markup is repainted without a layout pass when its size cannot change: the same number
    of lines, none of them wrapping, and either the same line lengths (a counter going from
    1,204 to 1,377) or a width set by CSS rather than by the text. Anything else re-lays-out.
    """

    def __init__(
        self, markup: str = "", *, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__(Content.from_markup(markup), id=id, classes=classes)
        self._markup = markup
        self._shape = self._measure(Content.from_markup(markup))

    @property
    def markup(self) -> str:
        """The markup shown."""
        return self._markup

    @staticmethod
    def _measure(content: Content) -> tuple[int, ...]:
        return tuple(line.cell_length for line in content.split("\n"))

    def show(self, markup: str) -> None:
        """Show ``markup`` (UI thread only)."""
        if markup == self._markup:
            return
        content = Content.from_markup(markup)
        shape = self._measure(content)
        fits = max(shape, default=0) <= self.content_region.width
        width = self.styles.width
        sized_by_text = width is None or width.is_auto
        same_size = (
            self.is_mounted
            and fits
            and len(shape) == len(self._shape)
            and (shape == self._shape or not sized_by_text)
        )
        self._markup, self._shape = markup, shape
        if not same_size:
            # Textual 8.2's ``refresh(layout=True)`` only invalidates this widget's cached box
            # model when no layout request is already pending. A screen reflow (a resize, the
            # breakpoint classes) can lay the widget out with its old text while its own request
            # is still pending; the new text would then keep the old height (on 3.12+ the first
            # poll lands in that window at 80x24: the latency table showed one line of three).
            self._layout_updates += 1
        self.update(content, layout=not same_size)


class Titled(Widget):
    """Base for panels whose border title and subtitle carry figures (mix in before a container).

    Assigning a border title repaints the whole panel, even when the text is the same, so
    :meth:`set_titles` only assigns what changed.
    """

    _titles: tuple[str | None, str | None] = (None, None)

    def set_titles(self, title: str | None = None, subtitle: str | None = None) -> None:
        """Show ``title``/``subtitle`` (``None`` leaves one as it is). UI thread only."""
        old_title, old_subtitle = self._titles
        if title is not None and title != old_title:
            self.border_title = title
            old_title = title
        if subtitle is not None and subtitle != old_subtitle:
            self.border_subtitle = subtitle
            old_subtitle = subtitle
        self._titles = (old_title, old_subtitle)
