"""Training on two torchrun ranks (gloo, CPU) through `s5vh train --nproc 2`:

- two ranks with a batch of 7 split 4 + 3 take the same steps as one process with the batch of 7 (float
  tolerance), and the two ranks hold bit-identical weights;
- a rank killed right after joining the process group, and on the next attempt in the middle of epoch 2, is
  restarted by torchrun (--max-restarts), and the job continues from its checkpoint to exactly the weights of
  the uninterrupted job.

The behaviour is the released code's, so stochastic depth also runs during pseudo-label prediction: every
random draw of the one-process run is reproduced. The ranks run in a private network namespace
(tests/private_net.py); the test checks that no process it started is left.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from s5vh_cli import artifacts, config
from s5vh_cli.encode import encode_file
from s5vh_cli.engines.ddp import DDPEngine, under_torchrun
from s5vh_cli.train import train

sys.path.insert(0, str(Path(__file__).parent))
from private_net import marked_processes, private_net  # noqa: E402
from test_train import L, write_inputs  # noqa: E402

ARGS = ["--preset", "demo", "--behaviour", "released", "--bits", str(L), "--epochs", "2", "--warm-up-epochs", "1",
        "--batch-size", "7", "--ssm-backend", "torch", "--device", "cpu", "--threads", "1", "--quiet"]

# Imported by every Python process of the job (PYTHONPATH): dumps each rank's final weights and kills rank 1
# where $S5VH_TEST_KILL says, per attempt: "0:init" right after joining the group, "1:step5" at its 5th step.
HOOKS = r"""
import os, signal
if os.environ.get("S5VH_TEST_DUMP"):
    import torch
    from s5vh_cli.engines import ddp
    dump = os.environ["S5VH_TEST_DUMP"]
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    plan = dict(k.split(":") for k in os.environ.get("S5VH_TEST_KILL", "").split(",") if k)
    kill = plan.get(str(attempt)) if os.environ.get("RANK") == "1" else None
    real_start, real_barrier, real_step = ddp.DDPEngine.start, ddp.DDPEngine.barrier, torch.optim.AdamW.step
    def die():
        open(os.path.join(dump, f"killed-{attempt}-{kill}"), "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    def start(self, device):
        dev = real_start(self, device)
        if kill == "init":
            die()
        return dev
    steps = [0]
    def step(self, *a, **k):
        steps[0] += 1
        if kill == f"step{steps[0]}":
            die()
        return real_step(self, *a, **k)
    def barrier(self):
        torch.save(self._module.state_dict(), os.path.join(dump, f"rank{self.rank}.pt"))
        return real_barrier(self)
    ddp.DDPEngine.start, ddp.DDPEngine.barrier, torch.optim.AdamW.step = start, barrier, step
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ddp")
    write_inputs(d)
    (d / "hooks").mkdir()
    (d / "hooks" / "sitecustomize.py").write_text(HOOKS)
    return d


def run_job(d: Path, name: str, *extra: str, kill: str = "") -> subprocess.CompletedProcess:
    (d / name).mkdir()
    mark = f"ddp-{d}-{name}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(d / "hooks"), os.environ.get("PYTHONPATH", "")]),
               S5VH_TEST_DUMP=str(d / name), S5VH_TEST_KILL=kill, S5VH_TEST_MARK=mark, OMP_NUM_THREADS="1",
               S5VH_DEBUG="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "s5vh_cli", "train", str(d / "f.h5"), "--centers", str(d / "c.h5"),
           "-o", str(d / name / "model.pt"), *ARGS, "--nproc", "2", *extra]
    p = subprocess.run(private_net(cmd), env=env, capture_output=True, text=True, timeout=300)
    for _ in range(50):
        if not marked_processes(mark):
            break
        time.sleep(0.1)
    assert not marked_processes(mark), "a rank or torchrun outlived the job"
    return p


def weights(path: Path) -> dict[str, torch.Tensor]:
    d = torch.load(path, weights_only=True)
    return d.get("state_dict", d)


def metrics(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k != "time_s"} for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def ddp_run(inputs) -> Path:
    p = run_job(inputs, "ddp")
    assert p.returncode == 0, p.stderr[-3000:]
    return inputs / "ddp"


def test_two_ranks_equal_one_process(inputs, ddp_run, tmp_path):
    r0, r1 = weights(ddp_run / "rank0.pt"), weights(ddp_run / "rank1.pt")
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0), "ranks diverged"
    model = torch.load(ddp_run / "model.pt", weights_only=True)
    assert all(torch.equal(model["state_dict"][k], r0[k]) for k in r0)
    assert model["extra"]["processes"] == 2
    # an ordinary model file: encode takes it as it is
    codes = encode_file(ddp_run / "model.pt", inputs / "f.h5", tmp_path / "codes.h5", device="cpu",
                        ssm_backend="torch")
    assert codes.codes.shape == (20, L // 8)

    # the same run in this process, with the whole batch of 7
    m, t, _ = config.preset("demo", "released")
    m = dataclasses.replace(m, bits=L)
    t = dataclasses.replace(t, epochs=2, warm_up_epochs=1, batch_size=7)
    train(artifacts.read_features(inputs / "f.h5"), artifacts.read_centers(inputs / "c.h5"), m, t,
          tmp_path / "one.pt", device="cpu", ssm_backend="torch")
    one = weights(tmp_path / "one.pt")
    worst = max(float((one[k].float() - r0[k].float()).abs().max()) for k in one)
    scale = max(float(one[k].float().abs().max()) for k in one)
    assert worst < 1e-4 * max(1.0, scale), f"two ranks moved {worst:.2e} away from one process"
    a, b = metrics(tmp_path / "one.pt.run" / "metrics.jsonl"), metrics(ddp_run / "model.pt.run" / "metrics.jsonl")
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == [1, 2]
    for ra, rb in zip(a, b, strict=True):
        for k in ("loss", "rec", "dcl", "ca", "lr"):
            assert rb[k] == pytest.approx(ra[k], rel=1e-5), k


def test_killed_rank_restarts_and_resumes(inputs, ddp_run):
    p = run_job(inputs, "killed", "--max-restarts", "2", kill="0:init,1:step5")
    assert p.returncode == 0, p.stderr[-3000:]
    assert sorted(f.name for f in (inputs / "killed").glob("killed-*")) == ["killed-0-init", "killed-1-step5"]
    got, want = weights(inputs / "killed" / "model.pt"), weights(ddp_run / "model.pt")
    assert all(torch.equal(got[k], want[k]) for k in want), "the restarted job did not reach the same weights"
    assert metrics(inputs / "killed" / "model.pt.run" / "metrics.jsonl") == \
        metrics(ddp_run / "model.pt.run" / "metrics.jsonl")


def test_engine_shares_and_launcher_errors():
    """Shares of a batch: contiguous, in rank order, sizes differing by at most one (empty shares allowed)."""
    for world in (1, 2, 3, 5):
        for n in (2, 3, 7, 8):
            shares = [DDPEngine({"RANK": str(r), "WORLD_SIZE": str(world)}).rows(n) for r in range(world)]
            assert [i for s in shares for i in range(s.start, s.stop)] == list(range(n))
            sizes = [s.stop - s.start for s in shares]
            assert max(sizes) - min(sizes) <= 1
    assert not under_torchrun({}) and under_torchrun({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    e = DDPEngine({"RANK": "1", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "none", "TORCHELASTIC_RESTART_COUNT": "1"})
    assert e.run_id is None and not e.restarted and not e.is_writer  # no job id: a restart cannot tell its own run
    p = subprocess.run([sys.executable, "-m", "s5vh_cli", "train", "x.h5", "--nproc", "0"], capture_output=True,
                       text=True, env=dict(os.environ, S5VH_DEBUG=""))
    assert p.returncode == 2 and "Traceback" not in p.stderr and "--nproc" in p.stderr

