"""One error style for every command: `pyvmm: error: MESSAGE` on one line (click's usage errors too, with at most a
`Try 'pyvmm run --help'` hint on a second line) and a distinct exit status (README's table); tracebacks only with
--debug."""

from __future__ import annotations

import os
import sys

import click

from pyvmm.errors import ExitStatus, PyvmmError


def debug_enabled(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("PYVMM_DEBUG") == "1"


def report_usage_error(err: click.UsageError) -> None:
    """click's three-line usage error (usage, hint, blank line, `Error: ...`) as pyvmm's one line plus a hint."""
    message = err.format_message().replace("\n", " ")
    print(f"pyvmm: error: {message}", file=sys.stderr)
    if err.ctx is not None:
        print(f"Try '{err.ctx.command_path} --help' for help.", file=sys.stderr)


def run_cli(command: click.Command, argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = command.main(args=args, prog_name="pyvmm", standalone_mode=False)
    except PyvmmError as err:
        if debug_enabled(args):
            import traceback  # only here: it costs start-up time

            traceback.print_exc()
        print(f"pyvmm: error: {err}", file=sys.stderr)
        return err.exit_status
    except click.exceptions.Abort:
        print("pyvmm: aborted", file=sys.stderr)
        return ExitStatus.SIGINT
    except click.exceptions.NoArgsIsHelpError as err:
        print(err.format_message(), file=sys.stderr)  # the command's help, as click shows it
        return ExitStatus.USAGE
    except click.UsageError as err:
        report_usage_error(err)
        return ExitStatus.USAGE
    except click.ClickException as err:  # e.g. click.FileError: a file the user named
        print(f"pyvmm: error: {err.format_message()}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return ExitStatus.SIGINT
    return result if isinstance(result, int) else 0
