"""Training on torchrun ranks with DistributedDataParallel: gloo on the CPU, nccl on GPUs (one per rank).

Two ranks each holding half of a batch of B videos take the same steps as one process holding all B, up to
float rounding, because every random draw and every batch-wide term is made as the one process makes it:

- batches: every rank draws the same epoch permutation from the same seeded generator and takes its contiguous
  share of each global batch (the sampler of ``rows``). torch's DistributedSampler is not used: it shuffles
  with a generator of its own and pads or drops the last batch, so no run of it equals the one-process run;
- masks: every rank draws the masks of the whole global batch and keeps its rows;
- stochastic depth: inside ``shared_draws`` every DropPath draws the mask of the whole batch and keeps its rows
  (s5vh_cli.mamba.shared_row_draws), so the ranks' random states also stay equal;
- losses: reconstruction and centre alignment are means over rows, so each rank weights its mean by its share;
  the debiased contrastive loss uses the other videos of the batch as negatives, so it is computed on the
  codes gathered from every rank (all_gather whose backward returns each rank the gradient of its own rows,
  as SimCLR-style DDP does); the sum is scaled by the world size because DDP averages gradients;
- pseudo-label smoothing: the label predictions of every rank's rows are gathered so that every rank updates
  the soft labels of the whole batch.

Every rank holds the same weights, optimiser state and random state after every step; rank 0 alone writes
checkpoints, metrics and the model. A restarted job (``torchrun --max-restarts``) continues from the checkpoint
its failed attempt wrote.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from typing import Any

import torch

from ..errors import InputError, S5VHError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def under_torchrun(env: dict[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return all(k in env for k in TORCHRUN_VARS)


def train_engine() -> Any:
    """The DDP engine inside a torchrun worker, else the single-process one."""
    if under_torchrun():
        return DDPEngine()
    from .local import SingleProcess

    return SingleProcess()


class DDPEngine:
    name = "ddp"

    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ if env is None else env)
        self.rank, self.world = int(env["RANK"]), int(env["WORLD_SIZE"])
        self.local_rank = int(env.get("LOCAL_RANK", 0))
        self.is_writer = self.rank == 0
        run_id = env.get("TORCHELASTIC_RUN_ID", "")
        # "none" is what torchrun reports when no --rdzv-id was given: not a job that can be told apart
        self.run_id = run_id if run_id not in ("", "none") else None
        self.restarted = int(env.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0 and self.run_id is not None
        self._dev: torch.device | None = None
        self._net: Any = None
        self._module: Any = None
        self._n = 0  # rows of the current global batch
        self._started = False

    # ---- set-up ------------------------------------------------------------------------------------------
    def start(self, device: torch.device) -> torch.device:
        """Join the process group; returns this rank's device (cuda:LOCAL_RANK on GPUs)."""
        import torch.distributed as dist

        if device.type == "cuda":
            if device.index not in (None, self.local_rank) and self.world > 1:
                raise InputError(f"under torchrun each rank uses cuda:LOCAL_RANK; got --device {device}, "
                                 "pass --device cuda or auto")
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            if device.type == "cuda":
                dist.init_process_group("nccl", device_id=device)
            else:
                dist.init_process_group("gloo")
            self._started = True
        self._dev = device
        return device

    def prepare(self, model: torch.nn.Module) -> None:
        from torch.nn.parallel import DistributedDataParallel

        self._net = DistributedDataParallel(model, device_ids=[self._dev] if self._dev.type == "cuda" else None)
        self._module = model

    def close(self) -> None:
        import torch.distributed as dist

        if self._started and dist.is_initialized():
            dist.destroy_process_group()
        self._started = False

    # ---- per step ----------------------------------------------------------------------------------------
    def forward(self, model: torch.nn.Module, *args: Any) -> Any:
        return self._net(*args) if self._net is not None and model is self._module else model(*args)

    def _sizes(self, n: int) -> list[int]:
        base, extra = divmod(n, self.world)
        return [base + (r < extra) for r in range(self.world)]

    def rows(self, n: int) -> slice:
        """This rank's contiguous share of a global batch of ``n`` rows (starts the step: ``gather`` joins the
        shares of this batch)."""
        self._n = n
        sizes = self._sizes(n)
        a = sum(sizes[:self.rank])
        return slice(a, a + sizes[self.rank])

    def shared_draws(self, n: int, views: int) -> Any:
        from ..mamba import shared_row_draws

        mine = self.rows(n)
        index = torch.cat([torch.arange(mine.start, mine.stop) + v * n for v in range(views)])
        return shared_row_draws(views * n, index)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """The rows of every rank for the current batch, in global order; gradients reach only this rank's."""
        sizes = self._sizes(self._n)
        if t.shape[0] != sizes[self.rank]:
            raise ValueError(f"gather: {t.shape[0]} rows, this rank holds {sizes[self.rank]}")
        return _Gather.apply(t.to(self._dev), sizes, self.rank).to(t.device)

    def backward_loss(self, losses: dict[str, torch.Tensor], n_local: int, n_global: int, tcfg: Any) -> torch.Tensor:
        # DDP averages gradients over ranks. Per-row means count with this rank's share of the batch; the
        # contrastive loss is already the whole batch's (its gradient here reaches only this rank's rows).
        share = self.world * n_local / n_global
        return share * (losses["rec"] + tcfg.a_cluster * losses["ca"]) + self.world * tcfg.alpha * losses["dcl"]

    def logged(self, losses: dict[str, torch.Tensor], n_local: int, n_global: int, tcfg: Any) -> dict[str, float]:
        """The step's losses of the whole batch, equal on every rank."""
        import torch.distributed as dist

        part = torch.zeros(2, dtype=torch.float64, device=self._dev)
        if n_local:
            part += torch.stack([losses["rec"].detach(), losses["ca"].detach()]).double() * (n_local / n_global)
        dist.all_reduce(part)
        rec, ca = (float(v) for v in part.cpu())
        dcl = float(losses["dcl"].detach())
        return {"loss": rec + tcfg.alpha * dcl + tcfg.a_cluster * ca, "rec": rec, "dcl": dcl, "ca": ca}

    # ---- coordination ------------------------------------------------------------------------------------
    def on_writer(self, fn: Any) -> Any:
        """Run ``fn`` on rank 0 (it alone sees the run folder) and hand its result, or its error, to every rank."""
        import torch.distributed as dist

        box: list[Any] = [None, None]
        if self.is_writer:
            try:
                box[0] = fn()
            except S5VHError as e:
                box[1] = e
        dist.broadcast_object_list(box, src=0)
        if box[1] is not None:
            raise box[1]
        return box[0]

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        most = max(sizes)
        padded = torch.cat([x, x.new_zeros((most - x.shape[0],) + tuple(x.shape[1:]))]).contiguous()
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        ctx.sizes, ctx.rank = sizes, rank
        return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        a = sum(ctx.sizes[:ctx.rank])
        return grad[a:a + ctx.sizes[ctx.rank]], None, None


# ----------------------------------------------------------------------------------------------------------
# the launcher of `s5vh train --nproc N`
# ----------------------------------------------------------------------------------------------------------
def launch(nproc: int, args: list[str], *, max_restarts: int = 0) -> int:
    """Run ``s5vh ARGS`` on ``nproc`` ranks of this machine under torchrun; returns torchrun's exit code.

    The rendezvous is on 127.0.0.1 with a fresh job id (so a restarted attempt knows its own checkpoints);
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 gives the ranks a store of their own, which keeps restarts working
    after a rank dies right after joining (gloo was seen to fail every restart with "connectFullMesh failed"
    otherwise, depending on timing); gloo talks over the loopback interface.
    """
    if nproc < 1:
        raise InputError(f"--nproc must be at least 1, got {nproc}")
    if max_restarts < 0:
        raise InputError(f"--max-restarts must be 0 or more, got {max_restarts}")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--rdzv-backend=c10d",
           "--rdzv-endpoint=127.0.0.1:0", f"--rdzv-id=s5vh-{uuid.uuid4().hex}", f"--max-restarts={max_restarts}",
           "-m", "s5vh_cli", *args]
    env = dict(os.environ)
    env.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    proc = subprocess.Popen(cmd, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        # torchrun got the same Ctrl-C and stops its ranks; give it the time to, then make sure
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
        raise
