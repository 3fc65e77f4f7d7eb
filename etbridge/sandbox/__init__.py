"""A faithful local Event Temple API (the sandbox); see docs/sandbox.md.

This package imports nothing from the rest of etbridge, and the rest of etbridge does
not import it (the CLI only calls :func:`main`), so one misreading of the API cannot
hide in client and sandbox at once.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Run the sandbox with the command line of docs/sandbox.md; returns the exit status."""
    # Imported here so that importing the package does not pull in uvicorn.
    from etbridge.sandbox.cli import main as run

    return run(argv)


__all__ = ["main"]
