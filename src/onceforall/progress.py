"""A progress bar for long loops (measuring, training, evaluating), on stderr."""

from __future__ import annotations


def progress_bar(enabled: bool = True):
    """A rich progress bar with count and ETA, on stderr (stdout stays clean for --json)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    return Progress(*columns, disable=not enabled, console=Console(stderr=True))
