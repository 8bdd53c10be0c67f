"""`s5vh serve`: answer queries over HTTP from one index, with the model and backbone loaded once."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from ._common import err_console


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)


def serve_command(
    index: Path = typer.Argument(..., help="Index file made by `s5vh index`."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. Anything but a loopback address "
                             "needs an API token."),
    port: int = typer.Option(8080, "--port", help="TCP port (0: any free port; the one taken is printed)."),
    roots: list[Path] = typer.Option([], "--root", help="Folder whose files requests may name (query by path, "
                                     "add, sync); repeatable [default: none, so requests cannot name files]."),
    token_file: Path | None = typer.Option(None, "--token-file", help="File whose first line is the API token "
                                           "[default: $S5VH_TOKEN]. Requests then need 'Authorization: Bearer "
                                           "TOKEN'."),
    max_upload_mb: float = typer.Option(256.0, "--max-upload-mb", help="Largest request body (an uploaded clip), "
                                        "MB."),
    clip_workers: int = typer.Option(1, "--clip-workers", help="Clip queries decoded and embedded at once; the "
                                     "others wait."),
    topk: int = typer.Option(20, "--topk", "-k", help="Results per query when a request gives neither topk nor "
                             "radius."),
    model: Path | None = typer.Option(None, "--model", help="Model file [default: the one recorded in the "
                                      "index]; its sha256 must match."),
    weights: Path | None = typer.Option(None, "--weights", help="Backbone weights file for clip queries "
                                        "[default: the backbone's registered weights]."),
    device: str = typer.Option("auto", help="Device for clip and feature queries: auto, cpu, cuda, cuda:N."),
    ssm_backend: str = typer.Option("auto", help="Selective-scan backend: auto, cpu, torch, reference, cuda."),
    batch_size: int = typer.Option(32, help="Frames per backbone batch."),
    runtime: str = typer.Option("auto", help="Backbone runtime for clip queries: auto, torch, onnxruntime, "
                                "openvino (as `s5vh extract --runtime`)."),
    precision: str = typer.Option("auto", help="Backbone precision for clip queries: auto, float32, bfloat16, "
                                  "float16; use the one the indexed features were extracted with."),
    warm: bool = typer.Option(True, "--warm/--no-warm", help="Load the model and backbone and run one clip "
                              "through them before listening, so the first query is as fast as the rest."),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request on stderr."),
) -> None:
    """Serve INDEX over HTTP: a web page at /, the API under /api (queries by uploaded clip, server path,
    features or codes; add, remove, sync; duplicate groups; health and metrics), its OpenAPI docs at /docs.

    Responses are the documents the CLI prints with --json. Binds 127.0.0.1 unless --host says otherwise.
    Needs the extra: pip install 's5vh[serve]'. Stops on Ctrl-C; exit code 0, or 2 on error.
    """
    from ..config import ServeConfig
    from ..errors import InputError
    from ..serve import is_loopback, require_extra
    from . import _check

    token = os.environ.get("S5VH_TOKEN", "").strip()
    if token_file is not None:
        _check.existing_file(token_file, "a file holding the API token")
        try:
            lines = token_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{token_file}: cannot read the token ({e})") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise InputError(f"{token_file}: the first line is empty; it must hold the API token")
    cfg = ServeConfig(host=host, port=port, token=token, roots=tuple(str(r) for r in roots),
                      max_upload_mb=max_upload_mb, clip_workers=clip_workers, topk=topk)
    cfg.validate()
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    _check.existing_index(index)
    _check.existing_file(model, "a model file from `s5vh train`")
    _check.existing_file(weights, "a backbone weights file")
    _check.device(device)
    _check.ssm_backend(ssm_backend)
    _check.runtime(runtime)
    _check.precision(precision)
    for r in roots:
        _check.existing_dir(r, "folder (--root)")
    if not is_loopback(host) and not token:
        raise InputError(f"--host {host} is reachable from other machines: set an API token first "
                         "(S5VH_TOKEN=... or --token-file FILE)")
    require_extra()
    from ..serve.app import bind, create_app, run

    try:
        sock = bind(host, port)
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    from ..serve.state import ServerState
    from ._common import RichProgressSink

    state = ServerState(index, cfg, model_path=str(model) if model else None, device=device,
                        ssm_backend=ssm_backend, batch_size=batch_size, weights=str(weights) if weights else None,
                        runtime=runtime, precision=precision, progress=RichProgressSink(quiet=True))
    h = state.searcher.index
    if warm:
        _warm_up(state)
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    err_console.print(f"s5vh serve: {h.path} ({h.n} videos, {h.bits} bits) at http://{shown}:{bound[1]}/ "
                      f"(API docs: /docs){'; token required' if token else ''}", highlight=False, markup=False,
                      soft_wrap=True)
    run(create_app(state), sock, access_log=access_log)


def _warm_up(state) -> None:  # noqa: ANN001 - ServerState, imported lazily
    """Load the model and the backbone by querying one tiny generated clip; a failure only disables clip
    queries (codes queries need neither), and is said once."""
    import tempfile

    import numpy as np

    from ..demo import render_clip
    from ..errors import S5VHError

    s = state.searcher
    if not s.index.provenance.get("model_path") and state.model_path is None:
        state.model_error = "the index records no model file (start with --model PATH)"
    else:
        try:
            with tempfile.TemporaryDirectory(prefix="s5vh-warm-") as tmp:
                clip = Path(tmp) / "warm.mp4"
                render_clip(clip, "red_circle", np.random.default_rng(0), size=64, n_frames=16)
                # on the clip thread, which then holds the backbone's per-thread state for the real queries
                state.clip_pool.submit(s.query, [str(clip)], topk=1).result()
        except S5VHError as e:
            state.model_error = str(e)
    if state.model_error:
        err_console.print(f"s5vh serve: clip and feature queries are unavailable: {state.model_error}",
                          highlight=False, markup=False, soft_wrap=True)
