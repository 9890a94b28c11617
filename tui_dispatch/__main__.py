"""``python -m tui_dispatch``: the same as the ``tui-dispatch`` command."""

from __future__ import annotations

from tui_dispatch.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
