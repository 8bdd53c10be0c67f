"""`s5vh extract`: videos to per-frame CNN features (resumable)."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import RichProgressSink, console, print_json, printable


def register(app: typer.Typer) -> None:
    app.command("extract")(extract_command)


def extract_command(
    inputs: list[str] = typer.Argument(..., help="Videos, folders (searched recursively), quoted globs, list files "
                                       "(.txt/.lst/.list, one path a line) or - for paths on stdin."),
    output: Path = typer.Option(..., "-o", "--output", help="Features file to write (HDF5)."),
    frames: int = typer.Option(25, "--frames", help="Frames kept per video, T (30: the ActivityNet convention). "
                               "With --fps: the cap, shorter videos are padded by repeating their last frame."),
    fps: float | None = typer.Option(None, "--fps", help="Sample at this many frames per second from t=0 instead "
                                     "of T frames spread uniformly over the video."),
    backbone: str = typer.Option("mobilenet_v2", "--backbone", help="mobilenet_v2 (1280-d), resnet50 (2048-d) or "
                                 "vgg16 (fc7, 4096-d)."),
    weights: Path | None = typer.Option(None, "--weights", help="Checkpoint file (torchvision layout) instead of "
                                        "the registry's; else $S5VH_WEIGHTS_DIR, the torch hub cache, a download."),
    batch_size: int = typer.Option(32, "--batch-size", help="Frames per forward pass (whole videos are batched "
                                   "together until at least this many frames)."),
    workers: int | None = typer.Option(None, "--workers", help="Decoding processes (0: decode in the main "
                                       "process) [default: CPU cores - 1, at least 1]."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("float32", "--dtype", help="Stored feature type: float32 or float16."),
    views: int = typer.Option(0, "--views", help="Also store N transformed renderings of every video (crop, mirror, "
                              "colour, blur, JPEG, text, frame rate, sub-clip; docs/artifacts.md), for `s5vh train "
                              "--transformed-views`. Costs N+1 times the backbone work."),
    view_seed: int = typer.Option(0, "--view-seed", help="Seed of the views' random edits."),
    strict: bool = typer.Option(False, "--strict", help="Exit non-zero when any video fails (the output is still "
                                "written with the others)."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for inference [default: all cores]."),
    runtime: str = typer.Option("auto", "--runtime", help="Backbone runtime: auto (the fastest installed, measured "
                                "once per machine; torch on a GPU), torch, onnxruntime or openvino (extras "
                                "s5vh[onnxruntime], s5vh[openvino])."),
    precision: str = typer.Option("auto", "--precision", help="Compute precision: auto (float32 on CPU, float16 "
                                  "on GPU), float32, bfloat16 (faster on CPUs with bf16, other features) or "
                                  "float16 (GPU)."),
    decoder: str = typer.Option("auto", "--decoder", help="Video decoder: auto (PyAV when installed), pyav or "
                                "opencv; both give the same frames."),
    engine: str = typer.Option("local", "--engine", help="local: this machine (decode worker processes); ray: "
                               "a Ray Data pipeline on a Ray cluster (needs s5vh[distributed]; docs/scale-out.md)."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="With --engine ray: auto (the cluster "
                                           "this machine belongs to) or ray://HOST:PORT (Ray Client) "
                                           "[default: start Ray on this machine for this run]."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or log lines."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Turn videos into per-frame CNN features [videos, T, D] for `s5vh centers` / `s5vh train`.

    Rerunning on the same OUTPUT skips videos already done; an interrupted run resumes from OUTPUT.partial.
    Unreadable, corrupt or non-video files are reported, recorded in the output and skipped: the exit code is
    non-zero only when nothing could be extracted, or with --strict."""
    from ..runtime import prefer_passive_openmp

    prefer_passive_openmp()  # before torch loads: torch's spinning OpenMP pool collapses on shared cores
    from ..config import ExtractConfig
    from ..errors import InputError
    from . import _check

    if threads is not None and threads < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--threads")
    if workers is not None and workers < 0:
        raise typer.BadParameter("must be 0 or more", param_hint="--workers")
    if fps is not None and not fps > 0:
        raise typer.BadParameter("must be positive", param_hint="--fps")
    if frames < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--frames")
    if batch_size < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--batch-size")
    if views < 0:
        raise typer.BadParameter("must be 0 or more", param_hint="--views")
    if dtype not in ("float32", "float16"):
        raise InputError(f"--dtype must be float32 or float16, got {dtype!r}")
    if engine != "local" and workers is not None:
        raise typer.BadParameter("sets the local engine's decode processes; Ray schedules its own tasks",
                                 param_hint="--workers")
    if engine != "ray" and ray_address is not None:
        raise typer.BadParameter("needs --engine ray", param_hint="--ray-address")
    _check.engine(engine)
    _check.runtime(runtime)
    _check.precision(precision)
    _check.decoder(decoder)
    _check.inputs(inputs)
    _check.output_file(output)
    _check.existing_file(weights, "a backbone weights file")
    _check.device(device)
    from ..engines import get_engine
    from ..errors import VideoError
    from ..extract import extract

    cfg = ExtractConfig(backbone=backbone, frames=frames, sampling="uniform" if fps is None else f"fps={fps:g}",
                        batch_size=batch_size, dtype=dtype, views=views, view_seed=view_seed, runtime=runtime,
                        precision=precision, decoder=decoder)
    sink = RichProgressSink(quiet=quiet)
    result = extract(inputs, output, config=cfg, weights=None if weights is None else str(weights), device=device,
                     threads=threads, progress=sink,
                     engine=get_engine(engine, workers=workers, ray_address=ray_address))
    if as_json:
        print_json(result.as_dict())
    elif not quiet:
        console.print(printable(f"{result.out}: {result.videos} video(s) x {frames} frames; {result.extracted} extracted "
                      f"now, {result.skipped} already done, {len(result.failed)} failed; "
                      f"{result.frames_per_s:.1f} frames/s, {result.videos_per_s:.2f} videos/s "
                      f"({result.seconds:.1f} s; {result.runtime})"), highlight=False, markup=False)
        for p, reason in result.failed:
            console.print(f"  failed: {printable(p)}: {printable(reason)}", highlight=False, markup=False)
    if strict and result.failed:
        raise VideoError(f"{len(result.failed)} video(s) failed (--strict); {result.out} holds the other "
                         f"{result.videos}")
