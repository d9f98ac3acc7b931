"""Turning PyvmmError into one line on stderr and a distinct exit status; tracebacks only with --debug."""

from __future__ import annotations

import os
import sys
import traceback

import click

from pyvmm.errors import ExitStatus, PyvmmError


def debug_enabled(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("PYVMM_DEBUG") == "1"


def run_cli(command: click.Command, argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = command.main(args=args, prog_name="pyvmm", standalone_mode=False)
    except PyvmmError as err:
        if debug_enabled(args):
            traceback.print_exc()
        print(f"pyvmm: error: {err}", file=sys.stderr)
        return err.exit_status
    except click.exceptions.Abort:
        print("pyvmm: aborted", file=sys.stderr)
        return ExitStatus.SIGINT
    except click.ClickException as err:
        err.show()
        return ExitStatus.USAGE if isinstance(err, click.UsageError) else err.exit_code
    except KeyboardInterrupt:
        return ExitStatus.SIGINT
    return result if isinstance(result, int) else 0
