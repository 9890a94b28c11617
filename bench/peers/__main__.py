"""``python -m bench.peers MODULE JSON_KWARGS``: measure one side (see :func:`bench.peers._common.main`)."""

from __future__ import annotations

import sys

from bench.peers._common import main

if __name__ == "__main__":
    sys.exit(main())
