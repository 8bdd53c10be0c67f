"""`s5vh eval`: mAP@K (SSVH convention), mAP, precision/recall@K and PR curves of codes against labels."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import RichProgressSink, console, markup_safe, print_json, printable


def _parse_ks(text: str) -> tuple[int, ...]:
    from ..errors import InputError

    try:
        ks = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(f"--k must be comma-separated integers, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise InputError(f"--k values must be positive integers, got {text!r}")
    return ks


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_command(
        query: Path = typer.Argument(..., help="Query codes file (or features file with --model)."),
        labels: Path = typer.Option(..., "--labels", "-l", help="Query labels: HDF5 with a 'labels' dataset, or a "
                                    ".mat file (labels / q_label / re_label; v7.3 .mat files too)."),
        database: Path | None = typer.Option(None, "--database", "-d", help="Database codes (or features) file "
                                             "[default: the query set itself, self included]."),
        db_labels: Path | None = typer.Option(None, "--db-labels", help="Database labels (needed with --database)."),
        protocol: str = typer.Option("custom", help="Preset: custom, fcv (query = database, self included), "
                                     "ucf / hmdb (database = training split), act (q_label / re_label)."),
        labels_key: str | None = typer.Option(None, help="Array name inside the query labels file."),
        db_labels_key: str | None = typer.Option(None, help="Array name inside the database labels file."),
        model: Path | None = typer.Option(None, "--model", help="Model to encode features inputs."),
        k: str = typer.Option("5,20,40,60,80,100", "--k", help="Comma-separated K values."),
        no_full_map: bool = typer.Option(False, "--no-full-map", help="Skip mAP over the full ranking (faster)."),
        plots: Path | None = typer.Option(None, "--plots", help="Write PR, mAP@K and t-SNE PNGs to this folder "
                                          "(needs matplotlib)."),
        device: str = typer.Option("auto", help="Device for encoding features inputs."),
        ssm_backend: str = typer.Option("auto", help="Selective-scan backend for encoding features inputs."),
        batch_size: int = typer.Option(256, help="Videos per encode batch."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON (includes the PR curve)."),
    ) -> None:
        """Evaluate retrieval: relevance = at least one shared label; ranking = Hamming distance, then database row.

        mAP@K is the SSVH/ConMH/S5VH convention: AP@K = (1/K) sum_{r<=K} rel_r * P@r (normalised by K).
        """
        from . import _check

        ks = _parse_ks(k)
        for p, what in ((query, "a codes or features file"), (labels, "a labels file"),
                        (database, "a codes or features file"), (db_labels, "a labels file"),
                        (model, "a model file from `s5vh train`")):
            _check.existing_file(p, what)
        _check.at_least(batch_size, 1, "--batch-size")
        from ..evaluate import evaluate_files

        if plots is not None:
            from ..plots import _pyplot

            _pyplot()  # fail before the long part when matplotlib is missing
        res, q, ql = evaluate_files(str(query), str(labels), database=str(database) if database else None,
                                    db_labels=str(db_labels) if db_labels else None, protocol=protocol,
                                    labels_key=labels_key, db_labels_key=db_labels_key,
                                    model=str(model) if model else None, ks=ks, full_map=not no_full_map,
                                    device=device, ssm_backend=ssm_backend, batch_size=batch_size,
                                    progress=RichProgressSink(quiet=as_json))
        if plots is not None:
            from ..plots import write_plots

            res["plots"] = [str(p) for p in write_plots(res, q.codes, ql, plots)]
        if as_json:
            print_json(res)
            return
        from rich.table import Table

        t = Table(title=markup_safe(f"{res['protocol']}: {res['n_query']} queries x {res['n_database']} database, "
                                    f"{res['bits']} bits" + (", self included" if res["self_included"] else "")))
        t.add_column("K", justify="right")
        for col in ("mAP@K (SSVH)", "precision@K", "recall@K"):
            t.add_column(col, justify="right")
        for kk in res["ks"]:
            r = res["recall_at_k"][str(kk)]
            t.add_row(str(kk), f"{res['map_at_k'][str(kk)]:.4f}", f"{res['precision_at_k'][str(kk)]:.4f}",
                      "-" if r is None else f"{r:.4f}")
        console.print(t)
        if res["map"] is not None:
            console.print(f"mAP (full ranking): {res['map']:.4f}")
        if res["queries_without_relevant"]:
            console.print(f"{res['queries_without_relevant']} queries have no relevant database item (AP = 0)")
        for note in res.get("notes", []):
            console.print(f"note: {printable(note)}", highlight=False, markup=False)
        console.print(f"ties: {res['tie_rule']}; {res['seconds']:.1f} s")
        for p in res.get("plots", []):
            console.print(f"wrote {printable(p)}", markup=False, highlight=False)
