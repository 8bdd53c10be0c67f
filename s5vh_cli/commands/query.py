"""`s5vh query`: the indexed videos nearest to clips, features or codes, by Hamming distance."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import RichProgressSink, console, markup_safe, print_json, show_path, video_label


def register(app: typer.Typer) -> None:
    @app.command("query")
    def query_command(
        index: Path = typer.Argument(..., help="Index file made by `s5vh index`."),
        inputs: list[str] = typer.Argument(..., help="Video file(s), folder(s) of videos, list files, a features "
                                           ".h5 file or a codes .h5 file."),
        topk: int | None = typer.Option(None, "--topk", "-k", help="Results per query [default: 20; with --radius: "
                                        "all within the radius]."),
        radius: int | None = typer.Option(None, "--radius", "-r", help="Return every entry within this Hamming "
                                          "distance (bits, inclusive)."),
        exclude_self: bool = typer.Option(False, "--exclude-self", help="Drop results that are the query itself "
                                          "(same path; same id when the query has no path)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
        as_jsonl: bool = typer.Option(False, "--jsonl", help="Print one JSON line per query."),
        model: Path | None = typer.Option(None, "--model", help="Model file [default: the one recorded in the "
                                          "index]; its sha256 must match."),
        weights: Path | None = typer.Option(None, "--weights", help="Backbone weights file for clip inputs "
                                            "[default: the backbone's registered weights]."),
        device: str = typer.Option("auto", help="Device for clip and feature inputs: auto, cpu, cuda, cuda:N."),
        ssm_backend: str = typer.Option("auto", help="Selective-scan backend: auto, cpu, torch, reference, cuda."),
        batch_size: int = typer.Option(32, help="Frames per backbone batch / videos per encode batch."),
        runtime: str = typer.Option("auto", help="Backbone runtime for clip inputs: auto, torch, onnxruntime, "
                                    "openvino (as `s5vh extract --runtime`)."),
        precision: str = typer.Option("auto", help="Backbone precision for clip inputs: auto, float32, bfloat16, "
                                      "float16; use the one the indexed features were extracted with."),
        nprobe: int | None = typer.Option(None, help="BIVF indexes: inverted lists probed per query."),
        ef_search: int | None = typer.Option(None, help="BHNSW indexes: search candidate-list size."),
        nflip: int | None = typer.Option(None, help="BHash indexes: bit flips probed per table."),
        rerank: int = typer.Option(0, "--rerank", help="Re-score the top K Hamming candidates by the float16 "
                                   "descriptors the index stores (codes from `s5vh encode --descriptor`), best score "
                                   "first [default: 0, off]."),
        flip: bool = typer.Option(False, "--flip", help="Also search each clip's mirror image; every result keeps "
                                  "its better distance (and score). Video inputs only."),
        hop: str | None = typer.Option(None, "--hop", help="Index of time windows: step between the query's windows "
                                       "(e.g. 0.5s) [default: the index's]."),
        hits_per_window: int = typer.Option(20, "--hits-per-window", help="Index of time windows: candidates per "
                                            "query window that vote."),
    ) -> None:
        """Rank indexed videos by Hamming distance to each input (ties broken by key, so output is deterministic).

        On an index of time windows (`s5vh encode --segment`), each query is cut into windows too and the answer
        is per indexed video: the videos the query was most likely cut from, with the matching time range in
        the query and in the video (`--rerank` then weighs each window's hits by descriptor similarity).

        Exit code: 0 when every query found at least one result, 1 when some query found none (e.g. nothing
        within --radius; its "status" is "none" in JSON), 2 on error.
        """
        from ..runtime import prefer_passive_openmp

        prefer_passive_openmp()  # before torch loads (the backbone and the encoder, as in extract and encode)
        from ..errors import InputError
        from . import _check

        if as_json and as_jsonl:
            raise InputError("give --json or --jsonl, not both")
        if topk is not None and topk < 1:
            raise InputError(f"--topk must be at least 1, got {topk}")
        if radius is not None and radius < 0:
            raise InputError(f"--radius must be at least 0, got {radius}")
        _check.at_least(batch_size, 1, "--batch-size")
        _check.existing_index(index)
        _check.inputs(inputs)
        _check.existing_file(model, "a model file from `s5vh train`")
        _check.existing_file(weights, "a backbone weights file")
        _check.device(device)
        _check.ssm_backend(ssm_backend)
        _check.runtime(runtime)
        _check.precision(precision)
        from ..api import IndexParams, query

        k = topk if topk is not None else (None if radius is not None else 20)
        machine = as_json or as_jsonl
        if hits_per_window < 1:
            raise InputError(f"--hits-per-window must be at least 1, got {hits_per_window}")
        from ..encode import parse_seconds

        out = query(index, inputs, topk=k or 0, radius=radius, exclude_self=exclude_self,
                    model_path=str(model) if model else None, device=device, ssm_backend=ssm_backend,
                    batch_size=batch_size, weights=str(weights) if weights else None, runtime=runtime,
                    precision=precision,
                    params=IndexParams(nprobe=nprobe, ef_search=ef_search, nflip=nflip),
                    progress=RichProgressSink(quiet=machine), rerank=rerank, flip=flip,
                    hop=parse_seconds(hop, "--hop") if hop is not None else None, hits_per_window=hits_per_window)
        if as_json:
            print_json(out.to_json())
        elif as_jsonl:
            for rec in out.to_records():
                print_json(rec)
        else:
            _table(out)
        if out.queries_without_results:
            if not machine:
                console.print(f"{out.queries_without_results} of {len(out.queries)} queries found nothing",
                              highlight=False, markup=False)
            raise typer.Exit(1)


def _table(out) -> None:  # noqa: ANN001 - QueryOutcome, imported lazily
    """One table per query (rank, Hamming distance, video), at most 80 columns; keys are in the JSON output."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    what = f"within distance {out.radius}" if out.radius is not None else f"top {out.topk}"
    exact = "exact" if out.index.exact else f"approximate ({out.index.index_type})"
    extra = (f", re-ranked top {out.rerank}" if out.rerank else "") + (", with mirror images" if out.flip else "")
    rows = "time windows" if out.matches is not None else "videos"
    console.print(f"{show_path(str(out.index.path))}: {out.index.n} {rows}, {out.index.bits} bits, {exact}, "
                  f"{what}{extra}", highlight=False, markup=False)
    if out.matches is not None:
        _window_table(out)
        return
    for rec in out.to_records():
        t = Table(title=f"query: {markup_safe(show_path(rec['query']))}", title_justify="left", box=box.SIMPLE_HEAD,
                  width=min(console.width, 80), pad_edge=False)
        t.add_column("rank", justify="right", no_wrap=True)
        t.add_column("dist", justify="right", no_wrap=True)
        if out.scores is not None:
            t.add_column("score", justify="right", no_wrap=True)
        t.add_column("video", overflow="fold", ratio=1)
        if not rec["results"]:
            t.add_row("-", "-", *(["-"] if out.scores is not None else []), "(no results)")
        for r in rec["results"]:
            score = [f"{r['score']:.3f}"] if out.scores is not None else []
            t.add_row(str(r["rank"]), str(r["distance"]), *score, Text(video_label(r["id"], r["path"])))
        console.print(t)


def _window_table(out) -> None:  # noqa: ANN001 - QueryOutcome, imported lazily
    """Per query: the videos it was most likely cut from, with the matching time ranges."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    for rec in out.to_records():
        t = Table(title=f"query: {markup_safe(show_path(rec['query']))} ({rec['windows']} windows)",
                  title_justify="left", box=box.SIMPLE_HEAD, width=min(console.width, 100), pad_edge=False)
        for col in ("rank", "votes", "query s", "video s"):
            t.add_column(col, justify="right", no_wrap=True)
        t.add_column("video", overflow="fold", ratio=1)
        if not rec["results"]:
            t.add_row("-", "-", "-", "-", "(no results)")
        for r in rec["results"]:
            q, v = r["query_range_s"], r["video_range_s"]
            t.add_row(str(r["rank"]), f"{r['score']:.2f}", f"{q[0]:.1f}-{q[1]:.1f}", f"{v[0]:.1f}-{v[1]:.1f}",
                      Text(video_label(r["id"], r["path"])))
        console.print(t)
