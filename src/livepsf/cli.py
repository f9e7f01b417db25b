"""The ``livepsf`` command line: a thin typer layer over the library.

Exit codes (DESIGN.md): 0 success; 2 bad input, with a one-line message naming the file and the
problem and no traceback; 1 unexpected failure. Each command's body only parses options, calls the
library and prints; the work lives in the package modules.
"""

from __future__ import annotations

import typer
from rich.console import Console

from livepsf.errors import InputError

app = typer.Typer(
    name="livepsf",
    help="Real-time spatially-variant PSF estimation, depth from astigmatism and deconvolution.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Look at the synthetic training data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)


def fail_input(message: str) -> typer.Exit:
    """Print a one-line bad-input message and return the exit to raise (code 2)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


@app.command()
def version() -> None:
    """Print the livepsf version."""
    from livepsf import __version__

    console.print(__version__)


# Commands are added below, one function each; keep their bodies thin.


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``livepsf`` console script and of ``python -m livepsf``.

    typer's standalone mode already turns usage errors into exit code 2; an :class:`InputError` raised
    anywhere below a command becomes the same one-line message and exit code 2.
    """
    try:
        app(args=argv)
    except InputError as exc:
        raise SystemExit(fail_input(str(exc)).exit_code) from None


if __name__ == "__main__":
    main()
