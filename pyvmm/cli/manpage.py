"""pyvmm(1), generated from the click definitions themselves (so it cannot drift from --help): `pyvmm help --man`."""

from __future__ import annotations

import click

from pyvmm.cli.helpfmt import SectionedCommand, short_help


def roff(text: str) -> str:
    """Plain text as roff: backslashes and hyphens escaped, no line taken for a request."""
    lines = []
    for line in text.replace("\\", "\\e").replace("-", "\\-").splitlines():
        lines.append(f"\\&{line}" if line.startswith((".", "'")) else line)
    return "\n".join(lines)


def _paragraphs(text: str) -> str:
    return "\n.PP\n".join(roff(" ".join(p.split())) for p in text.split("\n\n") if p.strip())


def _options(command: click.Command, ctx: click.Context) -> list[str]:
    if isinstance(command, SectionedCommand):
        sections = command.grouped_records(ctx)
    else:
        sections = {"": [r for r in (p.get_help_record(ctx) for p in command.get_params(ctx)) if r is not None]}
    out: list[str] = []
    for title, records in sections.items():
        if title:
            out += [".PP", f".I {roff(title)}"]
        for names, help_text in records:
            out += [".TP", f".B {roff(names)}", roff(" ".join(help_text.split()))]
    return out


def _command(command: click.Command, ctx: click.Context, path: str) -> list[str]:
    out = [f".SS {roff(path)}", f".B {roff(path)}", roff(" ".join(command.collect_usage_pieces(ctx))), ".PP",
           _paragraphs(command.help or "")]
    out += _options(command, ctx)
    if isinstance(command, SectionedCommand) and command.examples:
        out += [".PP\n.I Examples"]
        for example, what in command.examples:
            out += [".TP", f".B {roff(example)}", roff(what)]
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                out += _command(sub, click.Context(sub, parent=ctx, info_name=name), f"{path} {name}")
    return out


def man_page(cli: click.Group, version: str) -> str:
    ctx = click.Context(cli, info_name="pyvmm")
    out = [f'.TH PYVMM 1 "" "pyvmm {version}" "User Commands"', ".SH NAME",
           roff(f"pyvmm - {short_help(cli).removeprefix('pyvmm: ').rstrip('.')}"), ".SH SYNOPSIS", ".B pyvmm",
           "COMMAND [OPTIONS] [ARGS]...", ".SH DESCRIPTION", _paragraphs(cli.help or ""), ".SH COMMANDS"]
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        if command is not None and not command.hidden:
            out += [".TP", f".B {roff(name)}", roff(short_help(command))]
    out.append(".SH REFERENCE")
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        if command is not None and not command.hidden:
            out += _command(command, click.Context(command, parent=ctx, info_name=name), f"pyvmm {name}")
    out += [".SH SHELL COMPLETION", roff('bash: eval "$(_PYVMM_COMPLETE=bash_source pyvmm)" in ~/.bashrc; zsh: '
                                          'zsh_source; fish: _PYVMM_COMPLETE=fish_source pyvmm | source.'),
            ".SH SEE ALSO", roff("README.md, docs/API.md (the control socket), docs/MACHINES.md (the machines and "
                                 "the bundled guests), docs/ARCHITECTURE.md; `pyvmm help --docs` prints where they "
                                 "are.")]
    return "\n".join(out) + "\n"
