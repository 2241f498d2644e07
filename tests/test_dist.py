"""Data-parallel training on real launchers: Open MPI's mpirun and a one-node slurm
cluster started here.  Two ranks with batch B must end with the weights of one
process with batch 2B (BatchNorm held in eval mode, so both compute the same
mean gradient); tools/dist_train.sh and tools/slurm_train.sh must leave the
single-process work dir; --resume continues bit for bit; a failing rank ends the
job with its message.  Missing MPI or slurm fails the tests (CI installs them)."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from test_pipeline import FMNIST, ROOT, SHORT, SUPERNET
from test_pipeline import test_supernet_work_dir as check_supernet_work_dir

WORKER = os.path.join(ROOT, "tests", "dist_worker.py")
CLUSTER = os.path.join(ROOT, "tests", "slurm_cluster.sh")
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
          "-x", "OMP_NUM_THREADS=1", "-x", "OPENBLAS_NUM_THREADS=1"]

# frozen-BN equivalence: 192 images, 2 epochs of 3 steps, arch steps and distillation included
EQUIV = ["train_dataloader.dataset.indices=192", "val_dataloader.dataset.indices=101",
         "train_cfg.max_epochs=2", "train_cfg.val_interval=1", "custom_hooks=[]",
         "default_hooks.logger.interval=3"]
EQUIV_DMCP = ["model.arch_start_train=2", "model.arch_train_freq=1", "model.target_flops=6",
              "model.distillation_times=3"]

PLAIN_CFG = """_base_ = ['{supernet}']
model = dict(_delete_=True, **_base_.supernet)
optim_wrapper = dict(_delete_=True, optimizer=dict(type='SGD', lr=0.1, momentum=0.9,
                                                   weight_decay=1e-4, nesterov=True))
custom_hooks = []
"""


def env(**extra):
    e = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    e["PYTHONPATH"] = ROOT + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.update(extra)
    return e


def sh(args, timeout=600, check=True, **extra_env):
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       env=env(**extra_env))
    if check and r.returncode != 0:
        raise AssertionError(f"{args[:6]}... failed ({r.returncode}):\n{r.stdout[-3000:]}\n"
                             f"{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="module", autouse=True)
def requirements():
    missing = [c for c in ("mpirun",) if shutil.which(c) is None]
    if missing:
        raise AssertionError("Open MPI is missing (mpirun): apt-get install openmpi-bin libopenmpi-dev")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise AssertionError("mpi4py is missing: pip install 'dmcp[dist]'") from None
    if not os.path.exists(os.path.join(FMNIST, "train-images-idx3-ubyte.gz")):
        raise AssertionError(f"Fashion-MNIST is missing from {FMNIST}: "
                             "apt-get install dataset-fashion-mnist")


def state(npz):
    z = np.load(npz)
    return {k: z[k] for k in z.files if k.startswith("state_dict/")}


def scalars(wd):
    return [json.loads(line) for line in open(os.path.join(wd, "vis_data", "scalars.json"))]


def assert_same_training(one, two, rtol):
    """Final checkpoints of the 1-process and 2-rank runs agree to float rounding;
    the 2 ranks ended bit-identical."""
    ranks = json.load(open(os.path.join(two, "ranks.json")))
    assert ranks == {"world_size": 2, "differ": []}, ranks
    a, b = state(os.path.join(one, "epoch_2.npz")), state(os.path.join(two, "epoch_2.npz"))
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k].astype(np.float64), b[k].astype(np.float64)
        assert np.isfinite(x).all(), k
        scale = max(float(np.abs(x).max()) if x.size else 0.0, 1e-3)
        err = float(np.abs(x - y).max()) if x.size else 0.0
        assert err <= rtol * scale, f"{k}: 1 process vs 2 ranks differ by {err:.3g} (scale {scale:.3g})"
    # training did move the weights (the comparison is not between two initialisations)
    init = state(os.path.join(one, "epoch_1.npz"))
    moved = sum(not np.array_equal(init[k], a[k]) for k in a)
    assert moved > len(a) // 3


def run_equivalence(config, tmp_path, extra=(), mode="frozen-bn"):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    sh([sys.executable, WORKER, mode, config, "--work-dir", one, "--cfg-options", *EQUIV,
        *extra, "train_dataloader.batch_size=64"])
    sh(MPIRUN + ["-np", "2", sys.executable, WORKER, mode, config, "--work-dir", two,
                 "--cfg-options", *EQUIV, *extra, "train_dataloader.batch_size=32",
                 "--launcher", "mpi"])
    return one, two


def test_collectives_against_numpy():
    r = sh(MPIRUN + ["-np", "3", sys.executable, WORKER, "collectives"], timeout=120)
    assert r.stdout.count("collectives ok") == 3


def test_dmcp_two_ranks_equal_one_process(tmp_path):
    """Sandwich steps with distillation, architecture steps (alpha gradients and the
    FLOPs loss) and scheduled/direct width sampling: 2 x 32 == 1 x 64."""
    one, two = run_equivalence(SUPERNET, tmp_path, EQUIV_DMCP)
    assert_same_training(one, two, rtol=1e-5)
    assert any(k.startswith("state_dict/mutator.") for k in state(os.path.join(one, "epoch_2.npz")))
    for wd in (one, two):
        assert any("arch_loss" in rec for rec in scalars(wd))


def test_syncbn_two_ranks_equal_one_process(tmp_path):
    """norm_cfg=dict(type='SyncBN'): BatchNorm in training mode (batch statistics,
    running statistics, BN recalibration before validation), DMCP sandwich and
    architecture steps: 2 x 32 == 1 x 64, as with frozen BN."""
    sync = ["model.architecture.backbone.norm_cfg.type=SyncBN"]
    one, two = run_equivalence(SUPERNET, tmp_path, EQUIV_DMCP + sync, mode="sync-bn")
    assert_same_training(one, two, rtol=1e-4)
    a = state(os.path.join(one, "epoch_2.npz"))
    rv = [k for k in a if k.endswith("running_var")]
    assert rv and any(not np.allclose(a[k], 1.0) for k in rv)      # BN did train
    # without SyncBN the two runs differ: the test can tell
    plain_one, plain_two = run_equivalence(SUPERNET, tmp_path / "plain", EQUIV_DMCP, mode="sync-bn")
    b, c = state(os.path.join(plain_one, "epoch_2.npz")), state(os.path.join(plain_two, "epoch_2.npz"))
    assert max(float(np.abs(b[k] - c[k]).max()) for k in rv) > 1e-3


def test_plain_two_ranks_equal_one_process(tmp_path):
    """A plain classifier, and validation counts summed over ranks: 101 images split
    51/50 give the single process's accuracy."""
    cfg = tmp_path / "plain.py"
    cfg.write_text(PLAIN_CFG.format(supernet=SUPERNET))
    one, two = run_equivalence(str(cfg), tmp_path)
    assert_same_training(one, two, rtol=1e-5)
    va = [rec for rec in scalars(one) if "accuracy/top1" in rec]
    vb = [rec for rec in scalars(two) if "accuracy/top1" in rec]
    assert len(va) == len(vb) == 2
    for x, y in zip(va, vb):
        for k in ("accuracy/top1", "accuracy/top5"):
            assert abs(x[k] - y[k]) <= 100.0 / 101 + 1e-9, (k, x[k], y[k])   # one image at most


@pytest.fixture(scope="module")
def dist_searched(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("dist_supernet"))
    sh(["sh", "tools/dist_train.sh", SUPERNET, "2", "--work-dir", wd, "--cfg-options", *SHORT])
    return wd


def test_dist_train_sh_work_dir(dist_searched):
    """The artefacts of tools/dist_train.sh ... 2 are those of a single-process run,
    written once (by rank 0)."""
    check_supernet_work_dir((dist_searched, None))
    log = [f for f in os.listdir(dist_searched) if f.endswith(".log")]
    text = open(os.path.join(dist_searched, log[0])).read()
    assert "2 process(es)" in text
    assert text.count("Training finished") == 1
    steps = [rec["iter"] for rec in scalars(dist_searched) if "loss_max" in rec]
    assert steps == sorted(set(steps))               # one writer


def test_dist_resume(dist_searched, tmp_path):
    """Resuming the 2-rank run from epoch_1 reproduces its epoch_2 bit for bit:
    weights, alphas, BN statistics and both optimisers' states."""
    wd = str(tmp_path / "resumed")
    sh(["sh", "tools/dist_train.sh", SUPERNET, "2", "--work-dir", wd, "--resume",
        os.path.join(dist_searched, "epoch_1.npz"), "--cfg-options", *SHORT])
    z = np.load(os.path.join(dist_searched, "epoch_2.npz"))
    a = {k: z[k] for k in z.files if k != "meta"}
    z = np.load(os.path.join(wd, "epoch_2.npz"))
    b = {k: z[k] for k in z.files if k != "meta"}
    assert a.keys() == b.keys()
    assert any(k.startswith("arch_optimizer/") for k in a)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert not os.path.exists(os.path.join(wd, "epoch_1.npz"))


@pytest.mark.parametrize("how", ["raise", "kill"])
def test_failing_rank_ends_job(tmp_path, how):
    opts = ["train_dataloader.dataset.indices=192", "train_dataloader.batch_size=32",
            "val_dataloader.dataset.indices=64", "custom_hooks=[]"]
    r = sh(MPIRUN + ["-np", "2", sys.executable, WORKER, f"fail-{how}", SUPERNET, "--work-dir",
                     str(tmp_path), "--cfg-options", *opts, "--launcher", "mpi"],
           timeout=120, check=False)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    if how == "raise":
        assert "rank 1/2 failed: RuntimeError: injected failure in rank 1" in out, out[-3000:]
    else:
        assert "exited on signal 9" in out, out[-3000:]


def test_launcher_user_errors(tmp_path):
    e = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    r = subprocess.run([sys.executable, "tools/train.py", SUPERNET, "--work-dir", str(tmp_path),
                        "--launcher", "slurm"], cwd=ROOT, capture_output=True, text=True, env=e,
                       timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "SLURM_PROCID is not set" in r.stderr, r.stderr
    r = sh(["sh", "tools/dist_train.sh", SUPERNET, "two"], check=False)
    assert r.returncode != 0 and "NPROC must be a positive integer" in r.stderr


@pytest.fixture(scope="module")
def slurm_cluster():
    missing = [c for c in ("munged", "slurmctld", "slurmd", "srun", "sinfo") if shutil.which(c) is None]
    if missing:
        raise AssertionError(f"slurm/munge are not installed ({', '.join(missing)} missing): "
                             "apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        raise AssertionError("the one-node slurm cluster of this test runs its daemons as root")
    d = tempfile.mkdtemp(prefix="dmcp_slurm_")
    try:
        r = subprocess.run(["sh", CLUSTER, "start", d], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise AssertionError(f"the slurm cluster did not start:\n{r.stdout}\n{r.stderr}")
        yield os.path.join(d, "slurm.conf")
    finally:
        subprocess.run(["sh", CLUSTER, "stop", d], capture_output=True, timeout=120)
        shutil.rmtree(d, ignore_errors=True)


def test_slurm_train_sh(slurm_cluster, tmp_path):
    wd = str(tmp_path / "slurm")
    r = sh(["sh", "tools/slurm_train.sh", "debug", "dmcp_ci", SUPERNET, "--work-dir", wd,
            "--cfg-options", *SHORT], SLURM_CONF=slurm_cluster, TASKS="2", CPUS_PER_TASK="1")
    check_supernet_work_dir((wd, r))
    log = [f for f in os.listdir(wd) if f.endswith(".log")]
    assert "2 process(es)" in open(os.path.join(wd, log[0])).read()


def test_slurm_train_sh_reads_gpus(slurm_cluster, tmp_path):
    """mmrazor's `GPUS=N GPUS_PER_NODE=n sh tools/slurm_train.sh ...` starts N ranks,
    n to a node (a stand-in PYTHON reports each rank instead of training)."""
    stub = tmp_path / "python"
    stub.write_text('#!/bin/sh\necho "rank $SLURM_PROCID of $SLURM_NTASKS, '
                    '$SLURM_NTASKS_PER_NODE per node: $*"\n')
    stub.chmod(0o755)
    r = sh(["sh", "tools/slurm_train.sh", "debug", "dmcp_ci", SUPERNET], timeout=120,
           SLURM_CONF=slurm_cluster, GPUS="2", GPUS_PER_NODE="2", PYTHON=str(stub))
    assert "slurm_train.sh: GPUS=2 read as TASKS=2, GPUS_PER_NODE=2 as TASKS_PER_NODE=2 " \
           "(CPU ranks)" in r.stderr, r.stderr
    ranks = sorted(line.split(":")[0] for line in r.stdout.splitlines() if line.startswith("rank"))
    assert ranks == ["rank 0 of 2, 2 per node", "rank 1 of 2, 2 per node"], r.stdout
    assert f"{SUPERNET} --launcher slurm" in r.stdout
