"""`s5vh index`: build a Hamming index from codes, add to it, remove from it, inspect and check it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from ._common import RichProgressSink, console, markup_safe, print_json, printable

SUBCOMMANDS = ("build", "add", "remove", "info", "migrate")


class _BuildByDefault(TyperGroup):
    """`s5vh index CODES -o OUT` means `s5vh index build CODES -o OUT`; named subcommands work as usual."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:  # noqa: ANN001 - click signature
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["build", *args]
        return super().parse_args(ctx, args)


def _params(nprobe: int | None, ef_search: int | None, nflip: int | None):
    from ..api import IndexParams

    return IndexParams(nprobe=nprobe, ef_search=ef_search, nflip=nflip)


def _backend_options(backend: str, uri: str | None, collection: str | None, nlist: int | None,
                     replace_collection: bool) -> dict[str, Any]:
    """The backend settings given on the command line (the backend checks them)."""
    given = {"uri": uri, "collection": collection, "nlist": nlist,
             "replace_collection": True if replace_collection else None}
    return {k: v for k, v in given.items() if v is not None}


def _summary(info: dict[str, Any], title: str) -> None:
    from rich.table import Table
    from rich.text import Text

    t = Table(title=markup_safe(title), show_header=False, box=None)
    info = dict(info)
    opts = {k: v for k, v in (info.pop("backend_options", None) or {}).items() if v not in (None, "")}
    if opts:
        info["backend"] = f"{info.get('backend', '')} ({', '.join(f'{k}={v}' for k, v in opts.items())})"
    for k in ("index", "backend", "type", "exact", "bits", "count", "next_key", "model_sha256", "model_path",
              "backbone", "sampling", "frames", "params", "index_bytes", "repaired", "verify"):
        if k in info and info[k] not in (None, ""):
            v = info[k]
            t.add_row(k, Text(printable(v)))
    for s in info.get("sources", []):
        t.add_row("source", Text(printable(f"{s.get('path', '')} ({s.get('count')} codes, sha256 "
                                           f"{str(s.get('sha256', ''))[:12]})")))
    console.print(t)


def register(app: typer.Typer) -> None:
    sub = typer.Typer(
        cls=_BuildByDefault, no_args_is_help=True, add_completion=False, rich_markup_mode=None,
        help="Build a Hamming index from codes (`s5vh index codes.h5 -o index.bin`), or add/remove/inspect/migrate "
        "one.\n\n"
        "With the default faiss backend index.bin is a plain faiss binary index (faiss.read_index_binary opens "
        "it); with --backend milvus the codes live in a Milvus collection and index.bin names it. Ids, paths "
        "and provenance live beside it in index.bin.meta.h5.",
    )

    @sub.command("build")
    def build(
        codes: list[Path] = typer.Argument(..., help="Codes file(s) from `s5vh encode` (same model)."),
        out: Path = typer.Option(..., "-o", "--out", help="Index file to write (its metadata goes to OUT.meta.h5)."),
        index_type: str | None = typer.Option(None, "--type", "-t",
                                              help="faiss (default BFlat): BFlat (exact), BHNSW<M> (e.g. BHNSW32), "
                                              "BIVF<nlist> (e.g. BIVF1024), BHash<b>, BHash<m>x<b> (multi-index "
                                              "hashing). milvus (default BIN_FLAT): BIN_FLAT (exact), "
                                              "BIN_IVF_FLAT (with --nlist)."),
        nprobe: int | None = typer.Option(None, help="BIVF / BIN_IVF_FLAT: inverted lists probed per query "
                                          "(default 1 on faiss, min(8, nlist) on milvus)."),
        ef_search: int | None = typer.Option(None, help="BHNSW: search candidate-list size (faiss default 16)."),
        nflip: int | None = typer.Option(None, help="BHash: bits flipped per table when probing (default 0)."),
        backend: str = typer.Option("faiss", "--backend", help="Where the codes live: faiss (a local file) or "
                                    "milvus (a Milvus server; pip install 's5vh[milvus]')."),
        uri: str | None = typer.Option(None, "--uri", help="milvus: the server, e.g. http://127.0.0.1:19530."),
        collection: str | None = typer.Option(None, "--collection", help="milvus: the collection to hold the codes."),
        nlist: int | None = typer.Option(None, "--nlist", help="milvus BIN_IVF_FLAT: inverted lists (about sqrt(N))."),
        replace_collection: bool = typer.Option(False, "--replace-collection",
                                                help="milvus: drop an existing s5vh collection of that name first "
                                                "(one that belongs to the index being rebuilt is always replaced)."),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of a table."),
    ) -> None:
        """Build an index from codes. Keys (int64 ids) are assigned 0, 1, 2... in file order."""
        from . import _check

        for c in codes:
            _check.existing_file(c, "a codes file from `s5vh encode`")
        _check.output_file(out)
        _check.backend(backend)
        from ..api import build

        h = build(codes, out, index_type, params=_params(nprobe, ef_search, nflip), backend=backend,
                  backend_options=_backend_options(backend, uri, collection, nlist, replace_collection),
                  progress=RichProgressSink(quiet=as_json))
        info = h.info()
        if as_json:
            print_json(info)
        else:
            _summary(info, f"built {out}")

    @sub.command("add")
    def add(
        index: Path = typer.Argument(..., help="Index file made by `s5vh index`."),
        codes: Path = typer.Argument(..., help="Codes file from the same model and bit length."),
        on_existing: str = typer.Option("skip", "--on-existing",
                                        help="A video already in the index (same path) with unchanged content: "
                                        "skip it, replace it (new key), or error. A video whose content changed "
                                        "replaces its entry unless this is 'error'."),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of a table."),
    ) -> None:
        """Add codes to an index, once per video (new keys continue after the largest ever assigned)."""
        from ..errors import InputError
        from . import _check

        if on_existing not in ("skip", "replace", "error"):
            raise InputError(f"--on-existing must be one of skip, replace, error, got {on_existing!r}")
        _check.existing_index(index)
        _check.existing_file(codes, "a codes file from `s5vh encode`")
        from ..api import add, add_summary

        h, report = add(index, codes, on_existing=on_existing, progress=RichProgressSink(quiet=as_json))
        info = add_summary(h, report)
        if as_json:
            print_json(info)
        else:
            r = report.as_dict()
            _summary(info, f"{index}: added {r['added']}, replaced {r['replaced']}, skipped {r['skipped']} unchanged")

    @sub.command("remove")
    def remove(
        index: Path = typer.Argument(..., help="Index file made by `s5vh index`."),
        ids: list[str] = typer.Option([], "--id", help="String id (as in the codes file) to remove; repeatable."),
        keys: list[int] = typer.Option([], "--key", help="Database key (int64 id) to remove; repeatable."),
        paths: list[str] = typer.Option([], "--path", help="Video path to remove; repeatable."),
        ids_file: Path | None = typer.Option(None, "--ids-file", help="File with one string id per line."),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of a table."),
    ) -> None:
        """Remove entries by id, key or path. Every name must exist, else nothing is removed."""
        from ..errors import InputError
        from . import _check

        _check.existing_index(index)
        _check.existing_file(ids_file, "a file of ids, one a line")
        from ..api import remove as remove_entries
        from ..api import remove_summary

        names = list(ids)
        if ids_file is not None:
            try:
                names += [ln.strip() for ln in ids_file.read_text().splitlines() if ln.strip()]
            except OSError as e:
                raise InputError(f"{ids_file}: cannot read ({e.strerror or e})") from None
        h, gone = remove_entries(index, keys=keys, ids=names, paths=paths, progress=RichProgressSink(quiet=as_json))
        info = remove_summary(h, gone)
        if as_json:
            print_json(info)
        else:
            _summary(info, f"removed {gone.size} entries from {index}")

    @sub.command("info")
    def info(
        index: Path = typer.Argument(..., help="Index file made by `s5vh index`."),
        check: bool = typer.Option(False, "--check", help="Measure recall@k against exact search on sampled "
                                   "database codes."),
        verify: bool = typer.Option(False, "--verify", help="Compare every stored key and code with the metadata "
                                    "and repair what differs (server backends; a faiss file is checked on "
                                    "every open)."),
        k: int = typer.Option(20, "-k", help="k for --check."),
        queries: int = typer.Option(1000, help="Sampled queries for --check."),
        nprobe: int | None = typer.Option(None, help="BIVF: override nprobe for --check."),
        ef_search: int | None = typer.Option(None, help="BHNSW: override efSearch for --check."),
        nflip: int | None = typer.Option(None, help="BHash: override nflip for --check."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Show what an index holds and where it came from; --check measures its recall."""
        from . import _check

        _check.existing_index(index)
        _check.at_least(k, 1, "-k")
        _check.at_least(queries, 1, "--queries")
        from ..api import check_recall, open_index, verify_index

        progress = RichProgressSink(quiet=as_json)
        verified = verify_index(index, progress=progress) if verify else None
        h = open_index(index, params=_params(nprobe, ef_search, nflip), progress=progress)
        data = h.info()
        if verified is not None:
            data["verify"] = verified
        if check:
            data["check"] = check_recall(h, k=k, n_queries=queries)
        if as_json:
            print_json(data)
            return
        _summary(data, str(index))
        if check:
            c = data["check"]
            console.print(f"recall@{c['k']} vs exact: {c['recall']:.4f} (id overlap {c['id_recall']:.4f}) over "
                          f"{c['queries']} sampled queries, {c['queries_per_s']:.0f} queries/s")

    @sub.command("migrate")
    def migrate(
        index: Path = typer.Argument(..., help="Index file made by `s5vh index` (any backend)."),
        out: Path = typer.Option(..., "-o", "--out", help="Index file to write; may be INDEX itself (the index "
                                 "then changes backend in place)."),
        backend: str = typer.Option(..., "--backend", help="Backend to copy into: faiss or milvus."),
        index_type: str | None = typer.Option(None, "--type", "-t", help="Type in the new backend (default: its "
                                              "exact type, BFlat or BIN_FLAT; required for an approximate source)."),
        uri: str | None = typer.Option(None, "--uri", help="milvus: the server, e.g. http://127.0.0.1:19530."),
        collection: str | None = typer.Option(None, "--collection", help="milvus: the collection to hold the codes."),
        nlist: int | None = typer.Option(None, "--nlist", help="milvus BIN_IVF_FLAT: inverted lists."),
        replace_collection: bool = typer.Option(False, "--replace-collection",
                                                help="milvus: drop an existing s5vh collection of that name first."),
        nprobe: int | None = typer.Option(None, help="BIVF / BIN_IVF_FLAT: inverted lists probed per query."),
        ef_search: int | None = typer.Option(None, help="BHNSW: search candidate-list size."),
        nflip: int | None = typer.Option(None, help="BHash: bits flipped per table when probing."),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of a table."),
    ) -> None:
        """Copy an index into another backend (faiss file <-> Milvus collection) under the same keys, ids,
        paths and provenance. The source is left as it is."""
        from . import _check

        _check.existing_index(index)
        _check.output_file(out)
        _check.backend(backend)
        from ..api import migrate as migrate_index

        h = migrate_index(index, out, backend, index_type, params=_params(nprobe, ef_search, nflip),
                          backend_options=_backend_options(backend, uri, collection, nlist, replace_collection),
                          progress=RichProgressSink(quiet=as_json))
        info = h.info()
        if as_json:
            print_json(info)
        else:
            _summary(info, f"migrated {index} to {backend}: {out}")

    app.add_typer(sub, name="index")
