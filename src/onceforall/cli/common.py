"""What every `ofa` command shares: the Typer apps, the options, one error idiom and one JSON flag."""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from onceforall.errors import OFAError
from onceforall.registry import REGISTRY, LoadedSupernet, load_supernet

# click's UsageError (unknown option, bad value, missing argument): recent Typer releases vendor click
# privately, so it is reached through the public BadParameter instead of an import.
_UsageError: type[Exception] = typer.BadParameter.__mro__[1]


def _warning_line(message: Warning | str, category: type[Warning], *where: Any, **_: Any) -> None:
    """A warning as one `warning:` line (not Python's two lines with a file name and a source line)."""
    err_console.print(f"warning: {message}", markup=False, highlight=False)


class _OneLineUsageErrors(TyperGroup):
    """Usage errors end as one `error:` line, exit 2, like the library's own errors (not a boxed panel)."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _warning_line
                code = super().main(*args, standalone_mode=False, **kwargs)
        except _UsageError as err:
            ctx = getattr(err, "ctx", None)
            if type(err).__name__ == "NoArgsIsHelpError":  # `ofa` or `ofa latency` alone: the help
                err.show()
                sys.exit(2)
            where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            err_console.print(f"error: {err.format_message()}{where}", markup=False, highlight=False)
            sys.exit(2)
        except typer.Abort:
            err_console.print("aborted", markup=False)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)  # typer.Exit(n) comes back as n here


app = typer.Typer(
    help="Once-for-All: train one supernet, specialize it for every device.",
    no_args_is_help=True,
    cls=_OneLineUsageErrors,
)
latency_app = typer.Typer(help="Latency lookup tables measured on this machine.", no_args_is_help=True)
predictor_app = typer.Typer(help="The accuracy predictor.", no_args_is_help=True)
app.add_typer(latency_app, name="latency")
app.add_typer(predictor_app, name="predictor")
# Human-readable lines; with --json the result is the last stdout line, so messages go to stderr then.
# soft_wrap: a message stays one line (a long path is not broken at the terminal's width).
console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

SupernetOpt = Annotated[
    str,
    typer.Option(
        "--supernet",
        help="a registry id (`ofa list`), a supernet file written by `ofa train`, or an official checkpoint file",
    ),
]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option(
        help="weights for a registry id given as --supernet: an official checkpoint or our supernet file"
    ),
]
NetIdOpt = Annotated[
    str | None,
    typer.Option(
        "--net-id", help="the registry id of an official checkpoint file (default: recognised from it)"
    ),
]
ResolutionsOpt = Annotated[
    str, typer.Option(help="comma-separated input sizes of the search space (default: the supernet's)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the result as JSON on the last stdout line")]
DeviceOpt = Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda if available)")]
DataOpt = Annotated[
    str | None,
    typer.Option(
        help="dataset name (fashion-mnist, cifar10, ...) or ImageFolder root (default: the recipe's)"
    ),
]
RootOpt = Annotated[str | None, typer.Option(help="folder of a named dataset's files")]


def parse_resolutions(text: str) -> list[int] | None:
    """'160,224' -> [160, 224]; empty -> None (the supernet's own)."""
    if not text.strip():
        return None
    values = []
    for part in text.split(","):
        if not part.strip().isdigit() or int(part) < 1:
            raise OFAError(f"--resolutions {text!r}: {part!r} is not a positive integer; write e.g. 160,224")
        values.append(int(part))
    return values


def open_supernet(
    supernet: str, checkpoint: Path | None = None, net_id: str | None = None, resolutions: str = ""
) -> LoadedSupernet:
    """`--supernet`, `--checkpoint`, `--net-id` and `--resolutions` through the registry."""
    return load_supernet(supernet, checkpoint, net_id, resolutions=parse_resolutions(resolutions))


def say(message: str, as_json: bool = False) -> None:
    """A human-readable line (to stderr under --json, so stdout ends with the JSON alone)."""
    (err_console if as_json else console).print(message, markup=False)


def emit(payload: Any) -> None:
    print(json.dumps(payload, default=str))


@contextmanager
def user_errors() -> Iterator[None]:
    """Print the library's own errors (and OS errors such as a full disk) as one line, exit 2."""
    try:
        yield
    except OFAError as err:
        err_console.print(f"error: {err}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    except OSError as err:
        where = f" ({err.filename})" if err.filename else ""
        err_console.print(f"error: {err.strerror or err}{where}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err_console.print("interrupted; resumable jobs continue with the same command", markup=False)
        raise typer.Exit(130) from None


def registry_rows() -> list[dict[str, Any]]:
    """One row per registered supernet for `ofa list`."""
    return [
        {
            "id": e.id,
            "family": e.family,
            "official": e.official,
            "weights": "shipped" if e.weights else "random (or --checkpoint)",
            "predictor": "shipped" if e.predictor else "-",
            "elastic": ", ".join(e.elastic),
            "summary": e.summary,
        }
        for e in REGISTRY.values()
    ]
