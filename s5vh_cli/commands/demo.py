"""`s5vh demo`: make the demo corpus and run the whole pipeline on it, printing each command it runs."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import time
from pathlib import Path

import typer

from ._common import console, err_console, markup_safe


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for the corpus and every artifact."),
        per_class: int = typer.Option(16, help="Indexed clips per visual class (6 classes)."),
        frames: int = typer.Option(12, help="Frames sampled per clip."),
        bits: int = typer.Option(64, help="Code length in bits."),
        epochs: int = typer.Option(8, help="Training epochs."),
        topk: int = typer.Option(10, help="Results shown per query."),
        threads: int = typer.Option(0, help="CPU threads for torch (0: all cores)."),
    ) -> None:
        """Build a small demo corpus and run extract, centers, train, encode, index and query on it.

        Two searches, as a library needs them: S5VH codes for clips of similar content (one held-out clip per
        class), and the copy recipe (ITQ on whitened frames, re-ranked by frame descriptors) for a cropped,
        re-encoded copy of one clip. Every step is the real subcommand; the equivalent command line is printed
        before it runs, so the demo doubles as a tutorial. Takes a few minutes on 2 CPU cores.
        """
        from ..demo import CLASSES, make_copy, make_corpus
        from ._common import RichProgressSink

        t_all = time.perf_counter()
        out.mkdir(parents=True, exist_ok=True)
        n_steps = 8
        console.print(f"[bold]1/{n_steps}[/bold] demo corpus: {len(CLASSES)} classes x {per_class} clips in "
                      f"{markup_safe(out / 'videos')}")
        made = make_corpus(out, per_class=per_class, progress=RichProgressSink())
        copy_src = made["videos"][CLASSES.index("yellow_star") * per_class + min(3, per_class - 1)]
        copy_path = out / "queries" / f"copy_of_{copy_src.parent.name}_{copy_src.stem}.mp4"
        make_copy(copy_src, copy_path)
        th = ["--threads", str(threads)] if threads else []
        # --views 4: four transformed renderings of every clip, from which the copy recipe learns what copies change
        steps = [
            ["extract", str(out / "videos"), "-o", str(out / "feats.h5"), "--frames", str(frames), "--views", "4", *th],
            ["centers", str(out / "feats.h5"), "-o", str(out / "centers.h5"), "--preset", "demo", "--bits", str(bits)],
            ["train", str(out / "feats.h5"), "--centers", str(out / "centers.h5"), "-o", str(out / "model.pt"),
             "--preset", "demo", "--bits", str(bits), "--epochs", str(epochs), "--force", *th],
            ["encode", str(out / "model.pt"), str(out / "feats.h5"), "-o", str(out / "codes.h5"), *th],
            ["index", str(out / "codes.h5"), "-o", str(out / "index.bin")],
        ]
        query_args = ["query", str(out / "index.bin"), *map(str, made["queries"]), "--topk", str(topk)]
        copy_steps = [
            ["train", str(out / "feats.h5"), "--method", "itq", "--whiten", "256", "--bits", str(bits), "-o",
             str(out / "copies.pt"), "--force"],
            ["encode", str(out / "copies.pt"), str(out / "feats.h5"), "-o", str(out / "copies.h5"), "--descriptor",
             "frames", *th],
            ["index", str(out / "copies.h5"), "-o", str(out / "copies.bin")],
        ]
        copy_query = ["query", str(out / "copies.bin"), str(copy_path), "--rerank", "20", "--topk", str(topk)]
        timings: dict[str, float] = {}

        def step(i: int, args: list[str], label: str, note: str = "") -> None:
            console.print(f"\n[bold]{i}/{n_steps}[/bold] {note}$ s5vh "
                          f"{markup_safe(' '.join(shlex.quote(a) for a in args))}")
            t0 = time.perf_counter()
            _run(args)
            timings[label] = timings.get(label, 0.0) + time.perf_counter() - t0

        for i, args in enumerate(steps, start=2):
            step(i, args, args[0])
        step(7, query_args, "query", "similar content, S5VH codes: ")
        for args in copy_steps:
            step(8, args, "copies", "copies (ITQ on whitened frames, re-ranked): ")
        step(8, copy_query, "copies")
        # The same queries as JSON, checked here so the demo states its own result rather than asking for trust.
        docs = []
        for args in (query_args, copy_query):
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                _run([*args, "--json"])
            docs.append(json.loads(buf.getvalue()))
        _summary({"queries": docs[0]["queries"] + docs[1]["queries"]},
                 copy_src.relative_to(out / "videos").as_posix(), topk)
        total = time.perf_counter() - t_all
        console.print("\n[bold]Timings[/bold]: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
                      + f"; total {total:.1f}s")
        console.print("Each query's file name names its class, and so do the ids of its results: check by eye.")


def _summary(doc: dict, copy_id: str, topk: int) -> None:
    from rich.table import Table

    t = Table(title="demo check", title_justify="left")
    for col in ("query", f"same class in top {topk}", "note"):
        t.add_column(col)
    for q in doc["queries"]:
        name = Path(q["query"]).stem
        ids = [r["id"] for r in q["results"]]
        if name.startswith("copy_of_"):
            cls = copy_id.split("/")[0]
            rank = next((r["rank"] for r in q["results"] if r["id"] == copy_id), None)
            dist = next((r["distance"] for r in q["results"] if r["id"] == copy_id), None)
            note = (f"source {copy_id} at rank {rank}, distance {dist} (copy index, re-ranked)" if rank else
                    f"source {copy_id} not in the top {topk}")
        else:
            cls = name.split("_query")[0]
            note = "held-out clip of this class"
        same = sum(i.split("/")[0] == cls for i in ids)
        t.add_row(name, f"{same}/{len(ids)}", note)
    console.print(t)


def _run(args: list[str]) -> None:
    from ..cli import app

    command = typer.main.get_command(app)
    try:
        rc = command.main(args=args, prog_name="s5vh", standalone_mode=False)
    except typer.Exit as e:
        rc = e.exit_code
    # typer returns Exit codes when standalone_mode is off; a query with no result within a radius is 1
    if isinstance(rc, int) and not isinstance(rc, bool) and rc not in (0, 1):
        err_console.print(f"[red]step 's5vh {args[0]}' exited with code {rc}[/red]")
        raise typer.Exit(rc)
