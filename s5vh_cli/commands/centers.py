"""`s5vh centers`: pseudo-labels and semantic hash centres from a features file."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import RichProgressSink, console, markup_safe, print_json

_STAT_COLUMNS = (
    ("bits", "bits"), ("d_max", "need d"), ("min_hamming", "min d"), ("mean_hamming", "mean d"),
    ("violations", "pairs<d"), ("init_spearman", "rs init"), ("spearman", "rs"),
    ("sweeps", "sweeps"), ("seconds", "s"),
)


def _parse_bits(text: str) -> list[int]:
    from ..errors import InputError

    try:
        bits = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise InputError(f"--bits: expected comma-separated integers like 16,32,64, got {text!r}") from None
    if not bits or any(b <= 0 or b % 8 for b in bits):
        raise InputError(f"--bits: each bit length must be a positive multiple of 8, got {text!r}")
    return sorted(set(bits))


def register(app: typer.Typer) -> None:
    @app.command("centers")
    def centers(
        feats: Path = typer.Argument(..., help="Features file from `s5vh extract` (or a public feats .h5)."),
        out: Path = typer.Option(..., "-o", "--out", help="Centres file to write (HDF5)."),
        clusters: int = typer.Option(None, "--clusters", "-k", help="Number of clusters K (2..videos) "
                                     "[default: the preset's K (100), at most a quarter of the videos, as `s5vh "
                                     "train` does without --centers]."),
        bits: str = typer.Option(None, "--bits", help="Code lengths, comma-separated multiples of 8 "
                                 "[default: from the preset, 64]."),
        pca_dim: int = typer.Option(None, "--pca-dim", help="PCA dimensions before k-means [default: preset]."),
        seed: int = typer.Option(None, "--seed", help="Seed for k-means and the centre search [default: 1]."),
        preset_name: str = typer.Option("default", "--preset",
                                        help="Hyper-parameters: default, fcv, act, ucf, hmdb or demo."),
        as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON instead of a table."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or messages."),
    ) -> None:
        """Cluster the videos (PCA + k-means) and optimise one ±1 hash centre per cluster for each bit length.

        Writes the pseudo-labels, the PCA transform, the centroids and the centres; prints, per bit length, the
        required and achieved minimum Hamming distance and how well centre similarities follow the clusters'.
        """
        from ..config import preset, replace, to_dict
        from ..errors import ArtifactError, InputError
        from . import _check

        _, _, cfg = preset(preset_name)
        cfg = replace(cfg, pca_dim=pca_dim, seed=seed,
                      bits=_parse_bits(bits) if bits is not None else None)
        _check.existing_file(feats, "a features file from `s5vh extract`")
        _check.output_file(out)
        from .. import artifacts
        from ..centers import compute_centers, default_clusters

        if out.exists() and feats.exists() and out.resolve() == feats.resolve():
            raise InputError(f"{out}: the output would overwrite the input features file")
        sink = RichProgressSink(quiet=quiet)
        sha = artifacts.sha256_file(feats) if feats.is_file() else ""
        with artifacts.open_artifact(feats, "features", required=("feats",)) as h5:
            ds = h5["feats"]
            if ds.ndim != 3:
                raise ArtifactError(f"{feats}: 'feats' has shape {ds.shape}, expected [videos, frames, dim]")
            if ds.dtype.kind != "f":
                raise ArtifactError(f"{feats}: 'feats' has dtype {ds.dtype}, expected floating point")
            sink.log(f"{feats}: {ds.shape[0]} videos x {ds.shape[1]} frames x {ds.shape[2]} dims")
            if clusters is None:
                k = default_clusters(ds.shape[0], cfg.n_clusters)
                if k != cfg.n_clusters:
                    sink.log(f"no --clusters given: {k} clusters (the preset's {cfg.n_clusters}, at most a quarter "
                             f"of the {ds.shape[0]} videos)")
                cfg = replace(cfg, n_clusters=k)
            else:
                cfg = replace(cfg, n_clusters=clusters)
            result = compute_centers(ds, cfg, progress=sink, features_sha256=sha)
        sink.finish()
        artifacts.write_centers(out, result, artifacts.provenance("centers", to_dict(cfg), {"features": sha}))
        rows = [result.stats[b] for b in sorted(result.stats)]
        if as_json:
            print_json({"out": str(out), "videos": int(result.pseudo_labels.shape[0]),
                        "clusters": result.n_clusters, "config": to_dict(cfg), "stats": rows})
            return
        from rich.table import Table

        first = rows[0]
        t = Table(title=markup_safe(f"{out}: {result.n_clusters} clusters over {first['videos']} videos "
                        f"(PCA {first['pca_dim']} dims, {first['empty_clusters']} empty clusters)"))
        for _, head in _STAT_COLUMNS:
            t.add_column(head, justify="right")
        for st in rows:
            t.add_row(*(f"{st[k]:.3f}" if isinstance(st[k], float) else str(st[k]) for k, _ in _STAT_COLUMNS))
        console.print(t)
        console.print("need d: required minimum Hamming distance (Gilbert-Varshamov); pairs<d: centre pairs closer "
                      "than that; rs: Spearman correlation of centre inner products with centroid cosines",
                      highlight=False)
