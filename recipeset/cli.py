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


def _format_stats(d: dict) -> str:
    s = d["set_size"]
    lines = [f"{d['name']}: {d['recipes']} recipes, {d['ingredients']} ingredients, {d['cuisines']} cuisines"
             + (f" ({d['unlabelled']} unlabelled)" if d["unlabelled"] else ""),
             f"set size: min {s['min']}, mean {s['mean']:.2f}, median {s['median']:g}, max {s['max']}",
             "size histogram: " + " ".join(f"{k}:{v}" for k, v in s["histogram"].items())]
    if d["per_cuisine"]:
        lines.append("per cuisine: " + ", ".join(f"{k} {v}" for k, v in d["per_cuisine"].items()))
    lines.append("per source: " + ", ".join(f"{k} {v}" for k, v in d["per_source"].items()))
    lines.append("top ingredients: " + ", ".join(f"{n} {c}" for n, c in d["top_ingredients"][:10]))
    if d["sha256"]:
        lines.append(f"sha256: {d['sha256']}")
    return "\n".join(lines)


@data.command("stats")
@click.argument("dataset")
@click.option("--path", default=None, help="Dataset directory or file (flavornet: the files' directory).")
@click.option("--lenient", is_flag=True, help="Skip malformed lines (counted in the report) instead of failing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def data_stats(dataset: str, path: str | None, lenient: bool, as_json: bool) -> None:
    """Counts, set-size distribution and cleaning report of DATASET (flavornet, whatscooking, synthetic,
    or a .csv/.jsonl/.json file)."""
    import json

    from recipeset.data.sources import load_dataset

    table = load_dataset(dataset, path=path, lenient=lenient)
    d = table.describe()
    if as_json:
        click.echo(json.dumps(d))
    else:
        click.echo(_format_stats(d))
        click.echo(str(table.report))


@data.command("download")
@click.argument("dataset", type=click.Choice(["flavornet"]))
@click.option("--dest", default=None, help="Target directory [default: $RECIPESET_FLAVORNET_DIR or data/flavornet].")
@click.option("--base-url", default=None, help="Fetch from here instead of the pinned mirrors "
              "(also $RECIPESET_FLAVORNET_URL).")
def data_download(dataset: str, dest: str | None, base_url: str | None) -> None:
    """Download DATASET and verify every file against its pinned SHA-256."""
    from recipeset.data.sources.flavornet import download_flavornet

    out = download_flavornet(dest, base_url=base_url, progress=click.echo)
    click.echo(f"{dataset}: ready in {out}")


def main() -> None:
    """Console entry point."""
    try:
        cli()
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
