"""Help as a reference: commands listed with their whole first sentence, and a command's options grouped into
titled sections (click has none of its own), each option placed by its parameter name."""

from __future__ import annotations

import click


def short_help(command: click.Command) -> str:
    """The first sentence of the command's help, whole (click cuts it to fit a line, e.g. at "e.g.")."""
    return command.short_help or command.get_short_help_str(limit=10_000)


class ReferenceGroup(click.Group):
    """A group whose command list shows each command's whole first sentence, wrapped rather than cut."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, short_help(command)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class SectionedCommand(click.Command):
    """Options listed under the titles of `sections` ({title: [parameter names]}, in order); any option not placed
    goes to the last section, "Other", so none is ever hidden. `examples` follow the options."""

    def __init__(self, *args, sections: dict[str, list[str]], examples: list[tuple[str, str]] = (), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sections = sections
        self.examples = list(examples)

    def section_of(self, param: click.Parameter, ctx: click.Context) -> str:
        for title, names in self.sections.items():
            if param.name in names:
                return title
        if param is self.get_help_option(ctx):
            return list(self.sections)[-1]  # -h/--help ends the last section
        return "Other"

    def grouped_records(self, ctx: click.Context) -> dict[str, list[tuple[str, str]]]:
        """{section title: [(option names, help)]}, in the sections' order; empty sections left out."""
        grouped: dict[str, list[tuple[str, str]]] = {title: [] for title in [*self.sections, "Other"]}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                grouped[self.section_of(param, ctx)].append(record)
        return {title: rows for title, rows in grouped.items() if rows}

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        for title, rows in self.grouped_records(ctx).items():
            with formatter.section(title):
                formatter.write_dl(rows)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if self.examples:
            with formatter.section("Examples"):
                formatter.write_dl(self.examples)
        super().format_epilog(ctx, formatter)
