"""`s5vh info`: versions, devices and which selective-scan backend would be used."""

from __future__ import annotations

import platform

import typer

from ._common import console, print_json


def _version(dist: str) -> str | None:
    import importlib.metadata as md  # not at start-up: every command line would pay for it

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def register(app: typer.Typer) -> None:
    @app.command("info")
    def info(
        device: str = typer.Option("auto", help="Device to report on: auto, cpu, cuda, cuda:N."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Show versions, the device and selective-scan backend that would be used, and the extras' state."""
        import torch

        from .. import __version__, runtimes, ssm
        from ..device import describe_device, resolve_device

        dev = resolve_device(device)
        try:
            backend, reason = ssm.resolve_backend("auto", dev)
        except Exception as e:  # report, do not fail: info is for diagnosing exactly this
            backend, reason = "none", str(e)
        data = {
            "s5vh": __version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(),
            "device": describe_device(dev),
            "threads": torch.get_num_threads(),
            "ssm_backend": backend,
            "ssm_backend_reason": reason,
            "ssm_backends": ssm.available_backends(),
            "gpu_extra": {"mamba-ssm": _version("mamba-ssm"), "causal-conv1d": _version("causal-conv1d")},
            "backbone_runtimes": {r: (torch.__version__ if r == "torch" else _version(r)) if runtimes.installed(r)
                                  else f"not installed (pip install 's5vh[{r}]')" for r in runtimes.RUNTIMES},
            "graph_cache": str(runtimes.cache_dir()),
            "distributed_extra": {"ray": _version("ray")},
            "packages": {d: _version(d) for d in ("numpy", "scipy", "h5py", "faiss-cpu", "opencv-python-headless",
                                                   "numba", "typer", "rich", "av")},
        }
        if as_json:
            print_json(data)
            return
        from rich.table import Table

        from ._common import markup_safe as escape

        t = Table(show_header=False, box=None)
        for k in ("s5vh", "python", "platform", "torch", "torch_cuda", "cuda_available", "device", "threads"):
            t.add_row(k, escape(str(data[k])))
        t.add_row("ssm backend (auto)", escape(f"{backend}: {reason}"))
        for name, status in data["ssm_backends"].items():
            t.add_row(f"  {name}", escape(status))
        extra = data["gpu_extra"]
        t.add_row(escape("GPU extra [cuda]"), ", ".join(f"{k} {v or 'not installed'}" for k, v in extra.items()))
        t.add_row("backbone runtimes", escape(", ".join(f"{k} {v}" for k, v in data["backbone_runtimes"].items())))
        t.add_row("graph cache", escape(data["graph_cache"]))
        t.add_row(escape("distributed extra [distributed]"),
                  ", ".join(f"{k} {v or 'not installed'}" for k, v in data["distributed_extra"].items()))
        for k, v in data["packages"].items():
            t.add_row(k, v or "not installed")
        console.print(t)
