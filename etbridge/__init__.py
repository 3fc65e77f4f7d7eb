"""etbridge: Event Temple's API as a reliable stream of change events."""

__version__ = "0.1.0"
