"""`s5vh dedup`: groups of duplicate videos with a suggested keeper; optionally move the others aside."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import typer

from ._common import RichProgressSink, console, err_console, print_json, show_path, video_label


def register(app: typer.Typer) -> None:
    @app.command("dedup")
    def dedup_command(
        source: Path | None = typer.Argument(None, help="An index from `s5vh index`, or a folder of videos (indexed "
                                             "first, then kept in sync on later runs)."),
        radius: int | None = typer.Option(None, "--radius", "-r", help="Hamming distance (bits, inclusive) that "
                                          "joins two videos [default: chosen from the library's distances]."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
        as_jsonl: bool = typer.Option(False, "--jsonl", help="Print one JSON line per group."),
        as_csv: bool = typer.Option(False, "--csv", help="Print CSV: one row per video in a group."),
        html_out: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report with "
                                             "keyframes of every video (opens offline in any browser)."),
        move_to: Path | None = typer.Option(None, "--move-to", help="Move every non-keeper into this folder "
                                            "(keeping its relative path) and write a manifest for --undo."),
        manifest: Path | None = typer.Option(None, "--manifest", help="Manifest file for --move-to [default: "
                                             "MOVE_TO/s5vh-moves-<time>.jsonl]."),
        undo: Path | None = typer.Option(None, "--undo", help="Move the files a manifest records back; nothing "
                                         "else is done."),
        model: Path | None = typer.Option(None, "--model", help="For a folder: the model that encodes it (the "
                                          "first time; later runs use the one its index records)."),
        index: Path | None = typer.Option(None, "--index", help="For a folder: where its index lives [default: in "
                                          "the user cache, named by the folder]."),
        device: str = typer.Option("auto", help="For a folder: auto, cpu, cuda or cuda:N."),
        workers: int | None = typer.Option(None, help="For a folder: decode worker processes."),
    ) -> None:
        """Find groups of duplicate videos: connected components of all-against-all search within --radius.
        Each group lists its suggested keeper first (highest resolution, then bitrate, then duration, then the
        oldest file). Nothing is ever deleted; --move-to moves the others aside and --undo puts them back.

        Exit code: 0 when duplicates were found, 1 when none, 2 on error.
        """
        from ..errors import InputError

        formats = sum((as_json, as_jsonl, as_csv))
        if formats > 1:
            raise InputError("give one of --json, --jsonl, --csv")
        machine = formats == 1
        if undo is not None:
            if source is not None or move_to is not None:
                raise InputError("--undo takes only the manifest; give no source or --move-to with it")
            from ..api import undo_moves

            rep = undo_moves(undo)
            if machine:
                print_json(rep.as_dict())
            else:
                console.print(f"moved back {len(rep.moved)} file(s); manifest now {show_path(rep.manifest)}",
                              highlight=False, markup=False)
                for p, why in rep.skipped:
                    console.print(f"  left: {show_path(p)}: {why}", highlight=False, markup=False)
            return
        if source is None:
            raise InputError("give an index or a folder of videos (or --undo MANIFEST)")

        if radius is not None and radius < 0:
            raise InputError(f"--radius must be at least 0, got {radius}")
        if html_out is not None and (html_out.is_dir() or not (html_out.parent if str(html_out.parent) else Path(".")).is_dir()):
            raise InputError(f"{html_out}: not a file name in an existing folder")
        from . import _check

        if not source.is_dir():
            _check.existing_index(source)
        _check.existing_file(model, "a model file from `s5vh train`")
        _check.device(device)
        from .. import api

        sink = RichProgressSink(quiet=machine)
        index_path = source
        if source.is_dir():
            from ..search.sync import default_library_index, index_folder

            index_path = index or default_library_index(source)
            rep = index_folder(source, index_path, model_path=str(model) if model else None, device=device,
                               workers=workers, progress=sink)
            sink.log(f"{show_path(str(index_path))}: {rep.count} videos ({len(rep.added)} added, "
                     f"{len(rep.replaced)} replaced, {len(rep.removed)} removed)")
        result = api.dedup(index_path, radius=radius, progress=sink)
        doc = result.as_dict()
        if html_out is not None:
            from ..report import write_html

            write_html(result, html_out, progress=sink)
            sink.log(f"report: {show_path(str(html_out))}")
        moved = None
        if move_to is not None:
            moved = api.move_duplicates(result, move_to, manifest=manifest,
                                        root=source if source.is_dir() else None)
            doc["moves"] = moved.as_dict()
        if as_json:
            print_json(doc)
        elif as_jsonl:
            for g in doc["duplicate_groups"]:
                sys.stdout.write(json.dumps(g, ensure_ascii=True) + "\n")
        elif as_csv:
            _csv(doc)
        else:
            _table(doc)
            if moved is not None:
                console.print(f"moved {len(moved.moved)} file(s) to {show_path(str(move_to))}; undo with: s5vh dedup "
                              f"--undo {show_path(moved.manifest)}", highlight=False, markup=False)
                for p, why in moved.skipped:
                    console.print(f"  not moved: {show_path(p)}: {why}", highlight=False, markup=False)
        if not result.groups:
            if not machine:
                err_console.print("no duplicates found", highlight=False, markup=False)
            raise typer.Exit(1)


def _csv(doc: dict) -> None:
    w = csv.writer(sys.stdout, lineterminator="\n")
    cols = ["group", "keeper", "distance", "path", "id", "key", "width", "height", "duration", "size", "bitrate"]
    w.writerow(cols)
    for g in doc["duplicate_groups"]:
        for m in g["members"]:
            w.writerow([g["group"], int(m["keeper"]), m["distance"], m["path"], m["id"], m["key"], m["width"],
                        m["height"], m["duration"], m["size"], m["bitrate"]])


def _table(doc: dict) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    rule = doc["radius_rule"]
    how = "chosen from the library's distances" if rule.get("rule") == "auto" else "given"
    console.print(f"{show_path(doc['index'])}: {doc['videos']} videos, {doc['groups']} duplicate groups, "
                  f"{doc['duplicates']} duplicates (radius {doc['radius']} bits, {how})", highlight=False,
                  markup=False)
    for g in doc["duplicate_groups"]:
        t = Table(title=f"group {g['group']}: {g['size']} videos", title_justify="left", box=box.SIMPLE_HEAD,
                  width=min(console.width, 80), pad_edge=False)
        t.add_column("", no_wrap=True)
        t.add_column("dist", justify="right", no_wrap=True)
        t.add_column("video", overflow="fold", ratio=1)
        t.add_column("res", no_wrap=True)
        t.add_column("length", justify="right", no_wrap=True)
        t.add_column("size", justify="right", no_wrap=True)
        for m in g["members"]:
            res = f"{m['width']}x{m['height']}" if m["width"] and m["height"] else "?"
            dur = f"{m['duration']:.1f}s" if m["duration"] else "?"
            t.add_row("keep" if m["keeper"] else "", str(m["distance"]), Text(video_label(m["id"], m["path"])), res,
                      dur, _size(m["size"]))
        console.print(t)


def _size(b: int | None) -> str:
    if b is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if b < 1024 or unit == "GB":
            return f"{b:.0f}{unit}" if unit == "B" else f"{b:.1f}{unit}"
        b /= 1024
    return "?"


