"""Help as a reference: `run --help` in titled sections with examples, whole short helps, `pyvmm help [CMD]`, the man
page generated from the same click definitions, completion, the docs' installed location."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import click
from click.testing import CliRunner

from pyvmm.cli import cli
from pyvmm.cli.helpfmt import short_help
from pyvmm.cli.run import SECTIONS, run

RUN_SECTIONS = ["Guest", "CPUs and memory", "Console", "Devices", "Idle tuning", "Testing", "Debug", "Examples"]


def invoke(*args: str, env: dict | None = None) -> str:
    result = CliRunner().invoke(cli, list(args), env=env, terminal_width=100, prog_name="pyvmm")
    assert result.exit_code == 0, result.output
    return result.output


def test_run_help_is_in_sections_with_examples():
    text = invoke("run", "--help")
    titles = [line[:-1] for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert titles == RUN_SECTIONS, titles
    assert "Other:" not in text
    assert "pyvmm run -k exits --guest-arg 1000" in text


def test_every_run_option_has_a_section():
    placed = {name for names in SECTIONS.values() for name in names}
    params = {p.name for p in run.params if isinstance(p, click.Option) or p.name == "test_command"}
    assert params <= placed, sorted(params - placed)


def _commands(group: click.Group, ctx: click.Context):
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        yield command
        if isinstance(command, click.Group):
            yield from _commands(command, click.Context(command, parent=ctx, info_name=name))


def test_every_short_help_is_a_whole_sentence():
    for command in _commands(cli, click.Context(cli, info_name="pyvmm")):
        text = short_help(command)
        assert text and not text.endswith(("...", "e.g.")), (command.name, text)
    listing = invoke("ctl", "--help")
    assert "0=1 puts vCPU 0 on CPU 1" in " ".join(listing.split())


def test_help_command_shows_any_commands_help():
    direct = invoke("ctl", "x", "stats", "--help").replace("ctl x stats", "ctl NAME|SOCKET stats")
    assert invoke("help", "ctl", "stats") == direct  # and `ctl NAME CMD --help` needs no running VM
    assert invoke("help").startswith("Usage: pyvmm [OPTIONS] COMMAND")
    result = CliRunner().invoke(cli, ["help", "nosuch"])
    assert result.exit_code != 0


def test_man_page_covers_every_command_and_option(tmp_path):
    page = invoke("help", "--man")
    assert page.startswith(".TH PYVMM 1")
    for command in _commands(cli, click.Context(cli, info_name="pyvmm")):
        assert ".SS pyvmm" in page and command.name.replace("-", "\\-") in page
    for param in run.params:
        if isinstance(param, click.Option):
            assert param.opts[-1].replace("-", "\\-") in page, param.opts
    if shutil.which("groff"):
        (tmp_path / "pyvmm.1").write_text(page)
        warnings = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(tmp_path / "pyvmm.1")],
                                  capture_output=True, text=True, timeout=60)
        assert warnings.returncode == 0 and warnings.stderr == "", warnings.stderr


def test_completion_works_as_documented():
    script = CliRunner().invoke(cli, [], prog_name="pyvmm", env={"_PYVMM_COMPLETE": "bash_source"})
    assert "_pyvmm_completion" in script.output


def test_docs_are_where_help_says():
    docs = Path(invoke("help", "--docs").strip())
    assert {"API.md", "MACHINES.md", "ARCHITECTURE.md"} <= {p.name for p in docs.iterdir()}
