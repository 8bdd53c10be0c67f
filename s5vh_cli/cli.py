"""The s5vh command line: a Typer app whose subcommands parse, call the core and print.

Errors raised by the core (``S5VHError``) become one red line on stderr and exit code 2; ``--debug``
(anywhere on the line) prints the traceback first, with the same line and exit code after it.
"""

from __future__ import annotations

import io
import os
import sys
import traceback

import typer

try:  # typer >= 0.22 vendors click
    from typer._click import exceptions as _cx
except ImportError:  # pragma: no cover - older typer depends on click
    from click import exceptions as _cx

from . import __version__
from .commands import centers as _centers
from .commands import dedup as _dedup
from .commands import demo as _demo
from .commands import encode as _encode
from .commands import evaluate as _evaluate
from .commands import extract as _extract
from .commands import index as _index
from .commands import info as _info
from .commands import query as _query
from .commands import serve as _serve
from .commands import sync as _sync
from .commands import train as _train
from .commands._common import err_console, markup_safe, printable
from .errors import S5VHError

app = typer.Typer(
    name="s5vh",
    help="Self-supervised video hashing (S5VH): turn a folder of videos into compact binary codes and "
    "find the videos most like a clip.\n\n"
    "Pipeline: extract -> centers -> train -> encode -> index -> query.  Add --debug to any command for tracebacks.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"s5vh {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", callback=_version,
                                 is_eager=True),
    debug: bool = typer.Option(False, "--debug", help="On an error, print the traceback before the error line "
                               "(same exit code). Accepted anywhere on the line, e.g. after a subcommand; "
                               "S5VH_DEBUG=1 does the same."),
) -> None:
    """s5vh: self-supervised video hashing and near-duplicate video search."""


for _mod in (_extract, _centers, _train, _encode, _index, _query, _serve, _sync, _dedup, _evaluate, _info, _demo):
    _mod.register(app)


def _traceback() -> None:
    """The current exception's traceback on stderr, control characters escaped (names come from files)."""
    sys.stderr.write(printable(traceback.format_exc(), keep_newlines=True))
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or bool(os.environ.get("S5VH_DEBUG"))
    args = [a for a in args if a != "--debug"]
    command = typer.main.get_command(app)
    try:
        rc = command.main(args=args, prog_name="s5vh", standalone_mode=False)
        if isinstance(rc, int) and not isinstance(rc, bool) and rc:
            if rc == 130:  # typer turns Ctrl-C into Exit(130) and, with standalone_mode off, returns it
                err_console.print("[red]interrupted[/red]: outputs already written are intact; rerun to resume")
            sys.exit(rc)  # typer.Exit(code) comes back as a return value when standalone_mode is off
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except _cx.ClickException as e:  # usage errors: bad option, missing argument, bad value
        buf = io.StringIO()
        e.show(file=buf)  # the offending value is echoed: escape it like every other name
        sys.stderr.write(printable(buf.getvalue(), keep_newlines=True))
        sys.stderr.flush()
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("[red]interrupted[/red]: outputs already written are intact; rerun to resume")
        sys.exit(130)
    except S5VHError as e:
        if debug:
            _traceback()
        err_console.print(f"[red]error:[/red] {markup_safe(e)}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except BrokenPipeError:
        sys.stderr.close()
        sys.exit(0)
    except MemoryError:
        if debug:
            _traceback()
        err_console.print("[red]error:[/red] out of memory; try a smaller --batch-size", highlight=False)
        sys.exit(2)
    except Exception as e:  # a bug: still one line
        if debug:
            _traceback()
        msg = str(e).splitlines()[0] if str(e) else ""
        err_console.print(f"[red]internal error:[/red] {type(e).__name__}: {markup_safe(msg)} (rerun with --debug "
                          "for the traceback)", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
