"""What tests/test_dist.py starts under mpirun (or alone, --launcher none).

    python tests/dist_worker.py frozen-bn [train.py args]
        tools/train.py with every BatchNorm2d held in eval mode (fixed statistics),
        so that N ranks with batch B and one process with batch N*B compute the same
        gradients; afterwards rank 0 writes WORK_DIR/ranks.json telling whether every
        rank ended with bit-identical weights and alphas.
    python tests/dist_worker.py sync-bn [train.py args]
        the same with BatchNorm training as usual (the config asks for SyncBN), and
        the same ranks.json.
    python tests/dist_worker.py fail-raise|fail-kill [train.py args]
        tools/train.py where rank 1 raises (or is killed by SIGKILL) at its second step.
    python tests/dist_worker.py collectives
        the MPI group's broadcast, bucketed gradient average and count sum against
        NumPy on awkward shapes; exits non-zero (naming the check) on any mismatch.
"""
import json
import os
import signal
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dmcp import algorithm, dist  # noqa: E402
from dmcp.cli import run, train_main  # noqa: E402
from dmcp.nn import BatchNorm2d  # noqa: E402


def _work_dir(argv):
    return argv[argv.index("--work-dir") + 1]


def frozen_bn(argv):
    BatchNorm2d.training = property(lambda self: False, lambda self, mode: None)
    return train_and_compare_ranks(argv)


def train_and_compare_ranks(argv):
    import dmcp.runner as runner_mod
    made = []
    orig_init = runner_mod.Runner.__init__

    def init(self, *a, **k):
        orig_init(self, *a, **k)
        made.append(self)
        group = dist.current()
        if group is not None:
            group.bucket_bytes = 64 << 10        # several buckets and in-place large grads
    runner_mod.Runner.__init__ = init
    status = run(train_main, argv)
    if status:
        return status
    group = dist.current()
    state = made[0].model.state_dict()
    digest = {k: np.asarray(v).tobytes() for k, v in state.items()}
    every = group.comm.gather(digest, root=0) if group else [digest]
    if made[0].rank == 0:
        differ = sorted({k for d in every[1:] for k in d if d[k] != every[0][k]})
        with open(os.path.join(_work_dir(argv), "ranks.json"), "w") as f:
            json.dump({"world_size": len(every), "differ": differ}, f)
    return 0


def fail(argv, how):
    step = algorithm.dmcp_train_step

    def failing(model, optimizer, arch_optimizer, x, y, it, rng, group):
        if group.rank == 1 and it == 1:
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("injected failure in rank 1")
        return step(model, optimizer, arch_optimizer, x, y, it, rng, group)
    algorithm.dmcp_train_step = failing
    return run(train_main, argv)


def collectives():
    from dmcp.nn import Parameter
    group = dist.init("mpi")
    r, w = group.rank, group.world_size
    shapes = [(3,), (1,), (5, 7), (64, 3, 3, 3), (2, 1, 1, 1), (1000, 300), (17,), ()]
    group.bucket_bytes = 4096                     # small buckets, and in-place large arrays

    def grads(rank):
        g = np.random.default_rng(100 + rank)
        return [g.standard_normal(s).astype(np.float32) for s in shapes]
    params = [Parameter(np.zeros(s, np.float32)) for s in shapes]
    for p, g in zip(params, grads(r)):
        p.grad[...] = g
    for _ in range(2):                            # the cached plan is reused
        group.allreduce_grads(params)
    want = [np.mean([grads(k)[i].astype(np.float64) for k in range(w)], 0) for i in range(len(shapes))]
    want = [np.mean([want[i]] * w, 0) for i in range(len(shapes))]       # averaged twice = once
    for i, (p, m) in enumerate(zip(params, want)):
        err = float(np.abs(p.grad - m).max()) if p.grad.size else 0.0
        if err > 1e-5:
            sys.exit(f"collectives: allreduce_grads of shape {shapes[i]} off by {err:.3g}")
    every = group.comm.allgather(b"".join(p.grad.tobytes() for p in params))
    if any(e != every[0] for e in every):
        sys.exit("collectives: ranks hold different averaged gradients")
    c, t = group.sum_counts(np.array([r + 1, 2 * r], np.int64), 10 + r)
    if c.tolist() != [w * (w + 1) // 2, w * (w - 1)] or t != 10 * w + w * (w - 1) // 2:
        sys.exit(f"collectives: sum_counts gave {c.tolist()}, {t}")

    from dmcp.algorithm import build_classifier
    net = build_classifier(dict(type="ImageClassifier",
                                backbone=dict(type="ResNet_CIFAR", depth=20, in_channels=1),
                                neck=dict(type="GlobalAveragePooling"),
                                head=dict(type="LinearClsHead", num_classes=10, in_channels=64)),
                           seed=r)
    for _, b in net.named_buffers():
        b[...] = r + 1
    group.broadcast_model(net)
    ref = build_classifier(dict(type="ImageClassifier",
                                backbone=dict(type="ResNet_CIFAR", depth=20, in_channels=1),
                                neck=dict(type="GlobalAveragePooling"),
                                head=dict(type="LinearClsHead", num_classes=10, in_channels=64)),
                           seed=0).state_dict()
    for k, v in net.state_dict().items():
        want = np.ones_like(v) if k.endswith(("running_mean", "running_var", "num_batches_tracked")) \
            else ref[k]
        if not np.array_equal(v, want):
            sys.exit(f"collectives: broadcast_model left {k} different from rank 0's")
    print(f"collectives ok on rank {r}/{w}")
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "collectives":
        sys.exit(collectives())
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "frozen-bn":
        sys.exit(frozen_bn(args))
    if mode == "sync-bn":
        sys.exit(train_and_compare_ranks(args))
    if mode in ("fail-raise", "fail-kill"):
        sys.exit(fail(args, mode[len("fail-"):]))
    sys.exit(f"dist_worker.py: unknown mode {mode!r}")
