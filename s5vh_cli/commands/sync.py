"""`s5vh sync`: bring an index up to date with a folder."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import RichProgressSink, console, print_json, show_path


def register(app: typer.Typer) -> None:
    @app.command("sync")
    def sync_command(
        folder: Path = typer.Argument(..., help="Folder of videos (searched recursively)."),
        index: Path = typer.Argument(..., help="Index file made by `s5vh index` (from the same backbone and model)."),
        model: Path | None = typer.Option(None, "--model", help="Model file [default: the one recorded in the "
                                          "index]; its sha256 must match."),
        work: Path | None = typer.Option(None, "--work", help="Folder for the features of new and changed videos "
                                         "while a sync runs [default: INDEX.sync/]; removed when it finishes."),
        dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Only say what would be added, replaced and "
                                     "removed."),
        weights: Path | None = typer.Option(None, "--weights", help="Backbone weights file [default: the "
                                            "backbone's registered weights]."),
        device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
        workers: int | None = typer.Option(None, help="Decode worker processes [default: cores - 1, at most 8]."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON document."),
    ) -> None:
        """Extract and encode the videos under FOLDER that are new or changed since INDEX last saw them (size and
        modification time first, then a content hash), remove entries whose files are gone, and report it.

        Entries of files outside FOLDER are kept. An interrupted sync resumes where it stopped; the index itself
        changes in one atomic step at the end. Exit code 0, or 2 on error.
        """
        from . import _check

        _check.existing_dir(folder)
        _check.existing_index(index)
        _check.existing_file(model, "a model file from `s5vh train`")
        _check.existing_file(weights, "a backbone weights file")
        _check.device(device)
        _check.at_least(workers, 0, "--workers")
        from ..api import sync

        rep = sync(folder, index, model_path=str(model) if model else None, work=work, dry_run=dry_run,
                   weights=str(weights) if weights else None, device=device, workers=workers,
                   progress=RichProgressSink(quiet=as_json))
        if as_json:
            print_json(rep.as_dict())
            return
        verb = "would be" if dry_run else "were"
        console.print(f"{show_path(str(index))}: {rep.count} videos; {len(rep.added)} {verb} added, "
                      f"{len(rep.replaced)} replaced (content changed), {len(rep.removed)} removed (file gone), "
                      f"{rep.refreshed} refreshed (touched, same content), {rep.unchanged} unchanged",
                      highlight=False, markup=False)
        for title, items in (("added", rep.added), ("replaced", rep.replaced), ("removed", rep.removed)):
            for p in items[:20]:
                console.print(f"  {title}: {show_path(p)}", highlight=False, markup=False)
            if len(items) > 20:
                console.print(f"  ... and {len(items) - 20} more {title}", highlight=False, markup=False)
        for p, why in rep.failed:
            console.print(f"  failed: {show_path(p)}: {why}", highlight=False, markup=False)
