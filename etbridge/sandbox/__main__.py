"""``python -m etbridge.sandbox --port 0 ...``."""

from __future__ import annotations

import sys

from etbridge.sandbox.cli import main

if __name__ == "__main__":
    sys.exit(main())
