"""`s5vh encode`: turn a features file into binary codes with a trained model."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import RichProgressSink


def register(app: typer.Typer) -> None:
    app.command("encode")(encode_command)


def encode_command(
    model: Path = typer.Argument(..., help="Model file from `s5vh train`."),
    features: Path = typer.Argument(..., help="Features file from `s5vh extract` (or a public file with 'feats')."),
    output: Path = typer.Option(..., "-o", "--output", help="Codes file to write."),
    batch_size: int = typer.Option(256, "--batch-size", help="Videos per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    ssm_backend: str = typer.Option("auto", "--ssm-backend", help="Selective scan: auto, torch, cpu, cuda, "
                                    "reference."),
    descriptor: str = typer.Option("none", "--descriptor", help="Also store a float16 descriptor per video for "
                                   "`query --rerank`: none, soft (the continuous code before the sign, 2 bytes a "
                                   "bit) or frames (the continuous codes of --descriptor-frames frames, compared in "
                                   "time order)."),
    descriptor_frames: int = typer.Option(8, "--descriptor-frames", min=0, help="Frames kept by --descriptor "
                                          "frames, spread uniformly (0: all)."),
    segment: str | None = typer.Option(None, "--segment", help="One code per window of this length (e.g. 4s) "
                                       "instead of one per video, to find partial copies; needs features from "
                                       "`s5vh extract --fps RATE --frames MAX`."),
    hop: str | None = typer.Option(None, "--hop", help="Step between windows with --segment [default: a quarter "
                                   "of the window]."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads for torch."),
    engine: str = typer.Option("local", "--engine", help="local: this process; ray: a Ray Data pipeline on a "
                               "Ray cluster (needs s5vh[distributed]; docs/scale-out.md)."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="With --engine ray: auto (the cluster "
                                           "this machine belongs to) or ray://HOST:PORT (Ray Client) "
                                           "[default: start Ray on this machine for this run]."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or log lines."),
) -> None:
    """Encode every video of FEATURES into a packed binary code (bit = sign of the mean frame code, ties -> 1)."""
    from . import _check

    _check.existing_file(model, "a model file from `s5vh train`")
    _check.existing_file(features, "a features file from `s5vh extract`")
    _check.output_file(output)
    _check.at_least(batch_size, 1, "--batch-size")
    _check.device(device)
    _check.ssm_backend(ssm_backend)
    from ..runtime import prefer_passive_openmp

    prefer_passive_openmp()
    from ..encode import encode_file
    from ..engines import get_engine

    if engine != "ray" and ray_address is not None:
        raise typer.BadParameter("needs --engine ray", param_hint="--ray-address")

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    sink = RichProgressSink(quiet=quiet)
    encode_file(model, features, output, batch_size=batch_size, device=device, ssm_backend=ssm_backend,
                progress=sink, descriptor=descriptor, descriptor_frames=descriptor_frames, segment=segment, hop=hop,
                engine=get_engine(engine, ray_address=ray_address))
