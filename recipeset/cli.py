"""The ``recipeset`` command line: a thin click layer over the library.

Heavy imports (torch, pandas, mlflow) happen inside the commands, so ``recipeset --help`` stays fast.
Every user-facing error is a :class:`~recipeset.errors.RecipesetError`: one line on stderr, non-zero exit.
"""

from __future__ import annotations

import sys

import click

from recipeset.errors import RecipesetError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "show_default": True}


class UserError(click.ClickException):
    """A RecipesetError shown as ``error: <message>`` with exit code 1."""

    def format_message(self) -> str:
        return self.message


class RecipesetGroup(click.Group):
    """Turns RecipesetError (raised anywhere below) into a one-line click error, also under CliRunner."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RecipesetError as e:
            raise UserError(str(e)) from None


@click.group(cls=RecipesetGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="recipeset")
def cli() -> None:
    """recipeset: model recipes as sets of ingredients."""


# ---- data -------------------------------------------------------------------------------------------
@cli.group(cls=RecipesetGroup)
def data() -> None:
    """Inspect and fetch datasets."""


def main() -> None:
    """Console entry point."""
    try:
        cli()
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
