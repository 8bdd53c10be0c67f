"""`s5vh train`: train an S5VH hashing model on a features file."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import RichProgressSink, console, printable


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)


def train_command(
    ctx: typer.Context,
    features: Path = typer.Argument(..., help="Features file from `s5vh extract` (or a public file with 'feats')."),
    centers: Path | None = typer.Option(None, "--centers", help="Centres file from `s5vh centers`; computed "
                                        "in-process when omitted."),
    output: Path = typer.Option(Path("model.pt"), "-o", "--output", help="Model file to write."),
    bits: int | None = typer.Option(None, "--bits", help="Code length in bits (multiple of 8) [default: 64]."),
    method: str = typer.Option("s5vh", "--method", help="s5vh (train the model), or a training-free projection of "
                               "mean frame features fitted in seconds: itq (PCA + rotation) or lsh (random "
                               "hyperplanes). encode, index and query take any of them."),
    preset: str = typer.Option("default", "--preset", help="Hyper-parameter preset: default, fcv, act, ucf, hmdb, "
                               "demo."),
    behaviour: str = typer.Option("paper", "--behaviour", help="paper: the method as published; released: every "
                                  "departure of the authors' released code (docs/paper-vs-released.md)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Training epochs [default: the preset's; preset "
                                      "default: enough for about 200 steps, 3 to 60]."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Videos per step [default: the preset's; "
                                          "preset default: min(128, max(16, videos/8))]."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate (cosine decay to min_lr)."),
    encoder: str | None = typer.Option(None, "--encoder", help="mamba (S5VH) or transformer (ConMH-style)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    ssm_backend: str = typer.Option("auto", "--ssm-backend", help="Selective scan: auto, torch, cpu, cuda, "
                                    "reference."),
    resume: bool = typer.Option(False, "--resume", help="Continue from <output>.run/last.pt exactly where it "
                                "stopped."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed (initialisation, batches, masks)."),
    val_fraction: float | None = typer.Option(None, "--val-fraction", help="Hold out this fraction of the "
                                              "training file and keep the weights with the best validation loss."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch."),
    mask_ratio: float | None = typer.Option(None, "--mask-ratio", help="Fraction of frames masked in each view."),
    alpha: float | None = typer.Option(None, "--alpha", help="Weight of the contrastive loss."),
    a_cluster: float | None = typer.Option(None, "--a-cluster", help="Weight of the centre-alignment loss."),
    weight_decay: float | None = typer.Option(None, "--weight-decay", help="AdamW weight decay."),
    warm_up_epochs: int | None = typer.Option(None, "--warm-up-epochs", help="Epochs before pseudo-label "
                                              "smoothing starts."),
    tie_directions: bool | None = typer.Option(None, "--tie-directions/--no-tie-directions",
                                               help="Share weights between the forward and backward Mamba."),
    decoder_order: str | None = typer.Option(None, "--decoder-order", help="temporal or visible_then_masked."),
    mamba_init: str | None = typer.Option(None, "--mamba-init", help="mamba (Mamba's own init) or xavier."),
    centers_mode: str | None = typer.Option(None, "--centers-mode", help="fixed (+-1 hash centres, frozen) or "
                                            "learned (trainable prototypes)."),
    label_pred: str | None = typer.Option(None, "--label-pred", help="Pseudo-label prediction: paper or released."),
    transformed_views: bool | None = typer.Option(None, "--transformed-views/--no-transformed-views",
                                                  help="Cut the two contrasted views from two different renderings "
                                                  "of the video (features from `s5vh extract --views N`), so the "
                                                  "codes learn what copies go through. Off in the paper."),
    temporal_pool: int | None = typer.Option(None, "--temporal-pool", help="Pool frame codes over K consecutive "
                                             "stretches of time, bits/K bits each, so codes change when the order "
                                             "of frames does [default: 1, the mean over all frames, as the paper]. "
                                             "Also for --method itq|lsh."),
    whiten: int | None = typer.Option(None, "--whiten", help="With --method itq|lsh: first map every frame by a "
                                      "whitening learnt from the library's own transformed renderings (features "
                                      "from `s5vh extract --views N`, no labels) to this many dimensions (256 "
                                      "measured best), and re-rank with the whitened frames (`encode --descriptor "
                                      "frames`). Finds copies better (docs/BENCHMARKS.md 2a). [default: 0, off]"),
    reverse_negatives: bool | None = typer.Option(None, "--reverse-negatives/--no-reverse-negatives",
                                                  help="Use each video played backwards as an extra negative of "
                                                  "the contrastive loss, so codes depend on frame order. Off in "
                                                  "the paper."),
    force: bool = typer.Option(False, "--force", help="Replace an existing OUTPUT model; the old one is kept "
                               "beside it as OUTPUT.<sha256 prefix>.kept, so indexes built with it still query."),
    nproc: int | None = typer.Option(None, "--nproc", help="Train on this many processes of this machine "
                                     "(torchrun, DistributedDataParallel; each takes batch-size/N videos a step). "
                                     "Under torchrun itself, leave it out."),
    max_restarts: int = typer.Option(0, "--max-restarts", help="With --nproc: restart the job this many times "
                                     "after a process dies; it continues from its last checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or log lines."),
) -> None:
    """Train S5VH (self-local-global: masked reconstruction, contrast between two masked views, alignment with
    hash centres). Writes OUTPUT, plus OUTPUT.run/ with last.pt (for --resume) and metrics.jsonl.

    Several processes: --nproc N here, or `torchrun --nproc-per-node N -m s5vh_cli train ...` on one or many
    machines (docs/scale-out.md); rank 0 writes."""
    from .. import config
    from ..errors import InputError
    from . import _check

    # every argument and path is checked before torch is imported (that alone takes seconds)
    if threads is not None and threads < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--threads")
    _check.at_least(nproc, 1, "--nproc")
    _check.at_least(epochs, 1, "--epochs")  # leave it out for the schedule chosen from the library size
    _check.at_least(batch_size, 2, "--batch-size")
    _check.at_least(temporal_pool, 1, "--temporal-pool")
    _check.at_least(whiten, 1, "--whiten")
    if whiten and method == "s5vh":
        raise InputError("--whiten is for the training-free methods: add --method itq (or lsh)")
    _check.at_least(max_restarts, 0, "--max-restarts")
    _check.existing_file(features, "a features file from `s5vh extract`")
    _check.existing_file(centers, "a centres file from `s5vh centers`")
    _check.output_file(output)
    _check.device(device)
    _check.ssm_backend(ssm_backend)
    if nproc is not None:
        from ..engines.ddp import launch, under_torchrun

        if under_torchrun():
            raise typer.BadParameter("this process is already a torchrun rank", param_hint="--nproc")
        code = launch(nproc, _argv(ctx, drop=("nproc", "max_restarts")),
                      max_restarts=max_restarts)
        raise typer.Exit(code)
    model_cfg, train_cfg, centers_cfg = config.preset(preset, behaviour)
    model_cfg = config.replace(model_cfg, method=method, bits=bits, encoder=encoder, temporal_pool=temporal_pool,
                               whiten_dim=whiten,
                               tie_directions=tie_directions, decoder_order=decoder_order, mamba_init=mamba_init,
                               centers_mode=centers_mode)
    train_cfg = config.replace(train_cfg, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                               val_fraction=val_fraction, label_pred=label_pred, mask_ratio=mask_ratio,
                               alpha=alpha, a_cluster=a_cluster, weight_decay=weight_decay,
                               warm_up_epochs=warm_up_epochs, transformed_views=transformed_views,
                               reverse_negatives=reverse_negatives)
    if seed is not None:
        centers_cfg = config.replace(centers_cfg, seed=seed)
    model_cfg.validate()
    train_cfg.validate()
    from ..runtime import prefer_passive_openmp

    prefer_passive_openmp()
    import torch

    from .. import artifacts
    from ..device import resolve_device
    from ..engines.ddp import train_engine
    from ..train import train

    if threads is not None:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    engine = train_engine()
    quiet = quiet or not engine.is_writer  # one rank speaks
    sink = RichProgressSink(quiet=quiet)
    # read and validate every input before printing anything, so bad input is exactly one line
    feats = artifacts.read_features(features)
    cents = artifacts.read_centers(centers) if centers is not None else None
    if model_cfg.method == "s5vh":
        sink.log(f"preset: {preset}; behaviour: {behaviour}; {model_cfg.bits} bits; encoder {model_cfg.encoder}")
    elif cents is not None:
        sink.log(f"--method {model_cfg.method} uses no centres; ignoring {centers}")
    sink.log(f"features: {feats.n} videos x {feats.frames} frames x {feats.dim}-d ({feats.backbone})")
    try:
        summary = train(feats, cents, model_cfg, train_cfg, output, resume=resume, device=dev,
                        ssm_backend=ssm_backend, progress=sink, centers_cfg=centers_cfg, force=force, engine=engine)
    finally:
        engine.close()
    last = summary["last"]
    if model_cfg.method != "s5vh":
        if not quiet:
            console.print(printable(f"fitted {model_cfg.method.upper()} on the {summary['fit_on']} of "
                                    f"{summary['n_train']} videos in {summary['seconds']:.2f} s; model: "
                                    f"{summary['model']}"), highlight=False, markup=False)
        return
    if not quiet:
        console.print(printable(f"trained {summary['epochs_run']} epoch(s) in {summary['seconds']:.1f} s; "
                                f"final loss {last.get('loss', float('nan')):.4f}; model: {summary['model']}; "
                                f"metrics: {summary['metrics']}"), highlight=False, markup=False)


def _argv(ctx: typer.Context, drop: tuple[str, ...]) -> list[str]:
    """The command line of this invocation, rebuilt from its parsed values, without the options in ``drop``."""
    args = [ctx.info_name or "train"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in drop or value is None or value == param.default:
            continue
        if param.param_type_name == "argument":
            args += [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
        elif isinstance(value, bool) and (param.is_flag or param.secondary_opts):
            args.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            args += [param.opts[0], str(value)]
    return args
