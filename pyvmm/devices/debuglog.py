"""Debug lines that cost nothing unless someone asked for them."""

from __future__ import annotations

import sys


def debug(logger: str, message: str, *args: object) -> None:
    """Log `message` at debug level under `logger` if logging is in use: importing it for a line nobody configured
    to show would cost start-up (pyvmm imports logging only where it configures it, e.g. --debug)."""
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger(logger).debug(message, *args)
