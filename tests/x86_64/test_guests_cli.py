"""Bundled guests by name: `-k hello|exits|idle` from any directory (a real file of that name wins), `pyvmm guests`,
and the `exits` guest's report on the console."""

from __future__ import annotations

from pathlib import Path

import pyvmm_guests
from click.testing import CliRunner

from pyvmm.cli import cli
from tests.conftest import run_pyvmm


def test_a_bundled_guest_boots_by_name_from_any_directory(tmp_path):
    result = run_pyvmm("run", "--no-stdin", "-k", "exits", "--guest-arg", "5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"exits: 5\n"
    hello = run_pyvmm("run", "--no-stdin", "-k", "hello", cwd=tmp_path)
    assert hello.returncode == 0 and hello.stdout == b"Hello from the pyvmm x86_64 guest\n"


def test_exits_reports_the_default_count():
    result = run_pyvmm("run", "--no-stdin", "-k", "exits")
    assert result.returncode == 0 and result.stdout == b"exits: 100000\n"


def test_a_file_of_that_name_in_the_current_directory_wins(tmp_path):
    (tmp_path / "hello").write_bytes(b"")
    result = run_pyvmm("run", "--no-stdin", "-k", "hello", cwd=tmp_path)
    assert result.returncode == 65 and b"hello is empty" in result.stderr


def test_resolve_prefers_a_real_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert pyvmm_guests.resolve("idle", "x86_64") == pyvmm_guests.path("x86_64", "idle")
    assert pyvmm_guests.resolve("idle", "arm64").name == "idle.Image"
    (tmp_path / "idle").write_bytes(b"\xf4")
    assert pyvmm_guests.resolve("idle", "x86_64") == Path("idle")
    assert pyvmm_guests.resolve("other", "x86_64").name == "other"


def test_guests_lists_each_guest_with_what_it_does_and_its_arguments():
    result = CliRunner().invoke(cli, ["guests"])
    assert result.exit_code == 0, result.output
    for guest in pyvmm_guests.GUESTS:
        assert f"\n{guest.name}\n" in f"\n{result.output}"
        assert guest.arguments in result.output.replace("\n" + " " * 13, " ")
    assert "exits.bin" in result.output and "N (default 100000)" in result.output


def test_run_help_says_a_real_file_wins():
    text = " ".join(CliRunner().invoke(cli, ["run", "--help"]).output.split())
    assert "a file of that name in the current directory wins" in text and "pyvmm guests" in text
