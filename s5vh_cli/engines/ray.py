"""The Ray engine: extraction and encoding as Ray Data pipelines on a Ray cluster (``pip install 's5vh[distributed]'``).

extract:  paths -> ``map`` (decode and sample one video, a CPU task) -> ``map_batches`` with a callable class that
          holds the backbone (an actor pool, one GPU per actor on GPU nodes) -> rows, in input order, streamed
          back to this process, which writes them to the same journal as the local engine. Resuming, failure
          records and the artifact are therefore those of the local engine; so are the rows, bit for bit
          (every forward pass has the same shape, see ``extract.embed_clips``).
encode:   feature blocks of ``batch_size`` videos -> ``map_batches`` with a callable class that holds the model
          -> packed codes, in order.

The driver resolves and hash-checks the weights (backbone or model file) once and sends the bytes through the
object store, so workers need no copy of them; they do need the videos at the same paths (a shared file system)
and s5vh installed. Nothing here is imported unless ``--engine ray`` is asked for.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import BackendError, S5VHError
from . import BackboneInfo, ExtractPlan, Row

EXTRA = "pip install 's5vh[distributed]'"
_DECODE_RETRIES = 2


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise BackendError(f"--engine ray needs Ray Data, which is not installed: {EXTRA}") from None
    return ray


class RayEngine:
    """``address``: None starts a Ray instance on this machine (stopped at the end); "auto" joins the cluster
    this machine belongs to; "ray://HOST:PORT" connects through Ray Client. A Ray connection the caller already
    made (``ray.init`` before) is used as it is and left open. ``actors``: the most inference actors (default:
    one per GPU, else 3/4 of the CPUs for extract and all of them for encode).

    The pipeline itself runs in an actor on the cluster (``_Driver``) that hands its batches to this process:
    Ray Data cannot be driven through Ray Client, and this way neither address kind is a special case."""

    name = "ray"

    def __init__(self, address: str | None = None, *, actors: int | None = None, init_kwargs: dict | None = None):
        self.address = address
        self.actors = actors
        self.init_kwargs = dict(init_kwargs or {})
        self._started = False
        self._weights: Any = None  # object ref of the backbone checkpoint's bytes
        self._weights_bytes = 0
        self._info: BackboneInfo | None = None

    # ---- cluster -------------------------------------------------------------------------------------------
    def _connect(self) -> Any:
        import logging

        ray = import_ray()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
            if self.address is None:  # a Ray of this run's own: no dashboard, no business on the network
                kwargs |= {"include_dashboard": False, "_node_ip_address": "127.0.0.1"}
            kwargs |= self.init_kwargs
            try:
                ray.init(address=self.address, **kwargs)
            except Exception as e:  # ConnectionError, RuntimeError (auth), ValueError (bad address)
                raise BackendError(f"cannot start or reach the Ray cluster "
                                   f"{self.address or '(local)'}: {_first_line(e)}") from None
            self._started = True
        return ray

    def _pool(self, ray: Any, model_bytes: int = 0, cpu_share: float = 0.75) -> tuple[dict[str, Any], str]:
        """The inference actor pool: one GPU per actor where the cluster has GPUs, else one CPU per actor on
        ``cpu_share`` of the CPUs (extract: 3/4, the rest decodes; a MobileNetV2 pass costs about 4 times the
        decoding of its frames, docs/scale-out.md).

        Each actor also reserves memory for its model and a pass's activations, so that Ray places no more
        actors on a node than fit."""
        res = ray.cluster_resources()
        gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 1))
        memory = 4 * model_bytes + (512 << 20)
        if gpus:
            n = self.actors or gpus
            per, where = {"num_gpus": 1}, f"Ray cluster, {n} actor(s) with one GPU each ({gpus} GPU, {cpus} CPU)"
        else:
            n = self.actors or max(1, int(cpus * cpu_share))
            per, where = {"num_cpus": 1}, f"Ray cluster, {n} CPU inference actor(s) ({cpus} CPU, no GPU)"
        return {"actors": n, "per_actor": per | {"memory": memory}}, where

    def _stream(self, ray: Any, kind: str, **args: Any) -> Iterator[dict[str, np.ndarray]]:
        """Batches of a pipeline run by a driver actor on the cluster, two requests ahead."""
        driver = ray.remote(num_cpus=0, max_restarts=0)(_Driver).remote()
        try:
            with _ray_errors():
                ray.get(driver.start.remote(kind, **args))
                pending = [driver.next.remote() for _ in range(2)]
                while True:
                    batch = ray.get(pending.pop(0))
                    if batch is None:
                        return
                    pending.append(driver.next.remote())
                    yield batch
        finally:
            ray.kill(driver)

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False
        self._weights = None

    # ---- extract -------------------------------------------------------------------------------------------
    def open_backbone(self, plan: ExtractPlan) -> BackboneInfo:
        from ..backbones import resolve_weights

        path, digest = resolve_weights(plan.backbone, plan.weights)
        ray = self._connect()
        data = path.read_bytes()
        self._weights = ray.put(data)
        self._weights_bytes = len(data)
        pool, where = self._pool(ray)
        # every actor loads the backbone in the plan's runtime; the precision it will compute in is known here,
        # from the runtime's rule for the device an actor gets (GPU actors: one GPU each)
        from ..runtimes import resolve_precision

        prec = resolve_precision(plan.precision, "cuda" if "num_gpus" in pool["per_actor"] else "cpu")
        self._info = BackboneInfo(str(path), digest, f"{where}; runtime {plan.runtime}", precision=prec,
                                  runtime=f"{plan.runtime} on Ray actors, {prec}",
                                  record={"runtime": plan.runtime, "precision": prec})
        return self._info

    def extract(self, todo: list[tuple[str, str]], plan: ExtractPlan) -> Iterator[list[Row]]:
        if not todo:
            return
        ray = self._connect()
        seen: set[int] = set()
        yield from self._extract(ray, todo, range(len(todo)), plan, seen, per_block=plan.videos_per_pass)
        lost = [i for i in range(len(todo)) if i not in seen]
        if lost:
            # a decode task that kills its worker (a decoder crash, not an error) fails its block after Ray's
            # retries; the videos of such blocks are tried again one per block, which isolates the culprit
            yield from self._extract(ray, todo, lost, plan, seen, per_block=1)
            yield [("err", todo[i][0], todo[i][1], "its Ray task failed on every try, even alone (the decoder "
                    "crashes on this file?)") for i in lost if i not in seen]

    def _extract(self, ray: Any, todo: list[tuple[str, str]], which: Any, plan: ExtractPlan, seen: set[int],
                 per_block: int) -> Iterator[list[Row]]:
        pool, _ = self._pool(ray, self._weights_bytes)
        items = [{"i": i, "id": todo[i][0], "path": os.fsencode(todo[i][1]).hex()} for i in which]
        for batch in self._stream(ray, "extract", items=items, per_block=per_block, plan=plan,
                                  weights=[self._weights], sha256=self._info.weights_sha256, pool=pool):
            seen.update(int(i) for i in batch["i"])
            if len(batch["record"]):  # what the actors resolved ("auto" -> a runtime) goes into the provenance
                self._info.record.update(json.loads(str(batch["record"][0])))
            yield list(_rows(batch, plan))

    # ---- encode --------------------------------------------------------------------------------------------
    def encode(self, model: Any, model_path: str, feats: np.ndarray, *, batch_size: int, device: str,
               ssm_backend: str, progress: Any) -> np.ndarray:
        ray = self._connect()
        pool, where = self._pool(ray, os.path.getsize(model_path), cpu_share=1.0)
        progress.log(f"encoding on the {where}")
        n = feats.shape[0]
        # one block per forward pass of the local engine: the same rows meet in the same pass
        blocks = [ray.put(np.ascontiguousarray(feats[s:s + batch_size])) for s in range(0, n, batch_size)]
        with open(model_path, "rb") as f:
            ref = ray.put(f.read())
        out = np.empty((n, model.cfg.bits // 8), np.uint8)
        at = 0
        progress.start("encode", total=n)
        try:
            for batch in self._stream(ray, "encode", blocks=blocks, model=[ref], ssm_backend=ssm_backend,
                                      device=device, pool=pool):
                codes = batch["codes"]
                out[at:at + len(codes)] = codes
                at += len(codes)
                progress.advance(len(codes))
        finally:
            progress.finish()
        if at != n:
            raise BackendError(f"the Ray pipeline returned {at} codes for {n} videos")
        return out


class _Driver:
    """Builds and runs one Ray Data pipeline on the cluster and hands out its batches one call at a time."""

    def __init__(self) -> None:
        import logging

        import ray.data

        ctx = ray.data.DataContext.get_current()  # this process's own: the caller's settings are untouched
        ctx.execution_options.preserve_order = True  # rows come back in input order, as the local engine's
        ctx.enable_progress_bars = False  # the CLI draws its own
        ctx.print_on_execution_start = False
        # a block whose decode task died after its retries is dropped, not fatal: extract() tries its videos
        # again one by one and records the one that keeps failing, as the local engine's pool does
        ctx.max_errored_blocks = -1
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # failures come back as exceptions or rows
        self._it: Iterator[Any] | None = None

    def start(self, kind: str, pool: dict[str, Any], **args: Any) -> None:
        import ray.data

        compute = ray.data.ActorPoolStrategy(min_size=1, max_size=pool["actors"])
        if kind == "extract":
            plan = args["plan"]
            ds = ray.data.from_items(args["items"], override_num_blocks=max(1, len(args["items"]) // args["per_block"]))
            # Ray Data retries a task without end by default: a file that crashes its decoder would stall the
            # run. (Remote arguments given as a function also keep Ray from fusing these tasks into the
            # actors below, so decoding and inference overlap on different CPUs.)
            ds = ds.map(_decode_row, fn_kwargs={"plan": plan}, num_cpus=1, ray_remote_args_fn=_decode_task_args)
            ds = ds.map_batches(_Embedder, fn_constructor_kwargs={"plan": plan, "weights": args["weights"],
                                                                   "sha256": args["sha256"]},
                                batch_size=plan.videos_per_pass, batch_format="numpy", compute=compute,
                                **pool["per_actor"])
        else:
            # one block per forward pass of the local engine; each block is one call
            ds = ray.data.from_numpy_refs(args["blocks"])
            ds = ds.map_batches(_Encoder, fn_constructor_kwargs={"model": args["model"],
                                                                  "ssm_backend": args["ssm_backend"],
                                                                  "device": args["device"]},
                                batch_size=None, batch_format="numpy", compute=compute, **pool["per_actor"])
        self._it = iter(ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2))

    def next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _decode_task_args() -> dict[str, Any]:
    return {"max_retries": _DECODE_RETRIES}


# ----------------------------------------------------------------------------------------------------------
# what runs on the workers
# ----------------------------------------------------------------------------------------------------------
def _decode_row(row: dict[str, Any], plan: ExtractPlan) -> dict[str, Any]:
    """One video -> its sampled frames (or the failure reason): the local engine's decode job, in a Ray task."""
    import json

    from ..extract import _decode_job, _row_head

    path = os.fsdecode(bytes.fromhex(row["path"]))
    status, value = _decode_job(path, plan.frames, plan.sampling, plan.size, plan.resize, plan.decoder)
    out = {"i": row["i"], "id": row["id"], "path": row["path"]}
    if status == "err":
        return out | {"ok": False, "reason": value, "head": "", "notes": "[]",
                      "frames": np.zeros((0, plan.size, plan.size, 3), np.uint8)}
    return out | {"ok": True, "reason": "", "head": json.dumps(_row_head(row["id"], value)),
                  "notes": json.dumps(value.notes), "frames": value.frames}


class _Embedder:
    """Holds the backbone (loaded once per actor) and embeds batches of decoded videos."""

    def __init__(self, plan: ExtractPlan, weights: list[Any], sha256: str) -> None:
        import ray

        from ..runtimes import load_embedder

        self.plan = plan
        with _weights_file(ray.get(weights[0]), plan.backbone) as path:
            self.model, _ = load_embedder(plan.backbone, path, runtime=plan.runtime, precision=plan.precision,
                                          device=plan.device, threads=plan.threads,
                                          batch_size=plan.videos_per_pass * plan.frames)
        if self.model.weights_sha256 != sha256:
            raise BackendError(f"the weights that reached a Ray worker have sha256 "
                               f"{self.model.weights_sha256[:12]}..., not {sha256[:12]}...")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ..extract import embed_clips
        from ..video import Clip

        ok = np.asarray(batch["ok"], bool)
        t = self.plan.frames
        clips = [Clip(path="", frames=np.asarray(batch["frames"][k]), indices=np.zeros(0), times=np.zeros(0),
                      frame_count=0, fps=0.0, duration=0.0, valid=0) for k in np.flatnonzero(ok)]
        feats = embed_clips(self.model, clips, self.plan.videos_per_pass) if clips else None
        d = feats.shape[1] if feats is not None else 0
        out = np.zeros((len(ok), t, d), np.float32)
        for j, k in enumerate(np.flatnonzero(ok)):
            out[k] = feats[j * t:(j + 1) * t]
        record = json.dumps(self.model.record())
        return {"i": batch["i"], "id": batch["id"], "path": batch["path"], "ok": ok, "reason": batch["reason"],
                "head": batch["head"], "notes": batch["notes"], "feats": out,
                "record": np.array([record] * len(ok), dtype=object)}


class _Encoder:
    """Holds the hashing model (loaded once per actor) and encodes one block of features per call."""

    def __init__(self, model: list[Any], ssm_backend: str, device: str) -> None:
        import ray

        from ..checkpoint import load_model
        from ..device import resolve_device
        from ..ssm import resolve_backend

        self.dev = resolve_device(device)
        with _weights_file(ray.get(model[0]), "model") as path:
            self.model, _ = load_model(path, device="cpu")
        if self.model.cfg.encoder == "mamba":
            self.model.set_backend(resolve_backend(ssm_backend, self.dev)[0])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ..encode import encode_array

        feats = batch["data"]
        return {"codes": encode_array(self.model, feats, batch_size=max(1, len(feats)), device=self.dev)}


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------
def _rows(batch: dict[str, np.ndarray], plan: ExtractPlan) -> Iterator[Row]:
    import json

    for k in range(len(batch["id"])):
        vid, path = str(batch["id"][k]), os.fsdecode(bytes.fromhex(str(batch["path"][k])))
        if not bool(batch["ok"][k]):
            yield "err", vid, path, str(batch["reason"][k])
        else:
            yield ("ok", vid, path, json.loads(str(batch["head"][k])), np.asarray(batch["feats"][k], np.float32),
                   json.loads(str(batch["notes"][k])))


@contextlib.contextmanager
def _weights_file(data: bytes, name: str) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="s5vh-ray-") as d:
        path = os.path.join(d, f"{name}.pt")
        with open(path, "wb") as f:
            f.write(data)
        yield path


@contextlib.contextmanager
def _ray_errors() -> Iterator[None]:
    """A worker's S5VHError comes back as the same one-line error; any other failure as one line naming Ray."""
    try:
        yield
    except S5VHError:
        raise
    except Exception as e:
        cause = _s5vh_cause(e)
        if cause is not None:
            raise cause from None
        raise BackendError(f"the Ray pipeline failed: {_first_line(e)}") from None


def _s5vh_cause(e: BaseException) -> S5VHError | None:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, S5VHError):
            return e
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    for line in text.splitlines():
        if line.strip() and not line.startswith("Traceback"):
            return f"{type(e).__name__}: {line.strip()[:200]}"
    return type(e).__name__
