"""Running the command line in-process (click's CliRunner) for the tests: ``invoke`` and ``ok``."""

from click.testing import CliRunner

from recipeset.cli import cli


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=True)


def ok(*args: str):
    result = invoke(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result
