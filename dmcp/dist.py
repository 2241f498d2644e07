"""Process groups for data-parallel training.

``init('none')`` gives the single-process group used by default; ``init('mpi')``
(under mpirun) and ``init('slurm')`` (under srun --mpi=pmix) give an MPI group
through mpi4py, imported only then, so plain runs never need MPI.

What a group does for the Runner and the training steps:
- ``broadcast_model``: rank 0's weights, BN buffers and DMCP alphas to every rank;
- ``allreduce_grads``: gradients averaged over ranks, packed into ~4 MB float32
  buckets (one Allreduce each; a gradient as large as a bucket is reduced in
  place).  The reduction runs after the backward pass: the DMCP sandwich
  accumulates four backward passes into the same gradients before one step,
  so there is little backward left to overlap with.  With it, the BN running
  statistics of the broadcast model become rank 0's again, as PyTorch DDP's
  broadcast_buffers does: batch statistics stay per rank (unless the model
  uses SyncBN, ``allreduce_sum``), but the
  eval-mode forward of the architecture step, evaluation and checkpoints see
  one set of statistics, which is what --resume restores;
- ``broadcast_buffers``: rank 0's BN running statistics, so every rank
  evaluates the model rank 0 checkpoints;
- ``sum_counts``: validation counts summed over ranks;
- ``allreduce_sum``: a float64 array summed over ranks in place (SyncBN's
  per-channel sums in forward and backward);
- ``abort``: one rank's failure ends the whole job (MPI_Abort) instead of
  leaving the other ranks waiting in a collective.
"""
import os
import sys
import time

import numpy as np

from .config import UserError

BUCKET_BYTES = 4 << 20


class SingleProcess:
    rank, world_size, local_size = 0, 1, 1
    launcher = "none"

    def barrier(self):
        pass

    def broadcast_model(self, net, mutator=None):
        pass

    def broadcast_buffers(self, net):
        pass

    def allreduce_grads(self, params):
        pass

    def sum_counts(self, correct, total):
        return np.asarray(correct), int(total)

    def allreduce_sum(self, array):
        return array

    def abort(self, message):
        pass


class MPIGroup:
    """Every rank of MPI_COMM_WORLD; rank 0 is the one that writes."""

    def __init__(self, MPI, launcher, bucket_bytes=BUCKET_BYTES):
        self.MPI, self.launcher = MPI, launcher
        self.comm = MPI.COMM_WORLD
        self.rank, self.world_size = self.comm.Get_rank(), self.comm.Get_size()
        self.local_size = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
        self.bucket_bytes = int(bucket_bytes)
        self._plans = {}
        self._synced_buffers = []            # float32 buffers made rank 0's with every allreduce
        self.allreduce_seconds = 0.0         # time spent in allreduce_grads (packing included)
        self.allreduce_bytes = 0

    # ------------------------------------------------------------ collectives
    def barrier(self):
        self.comm.Barrier()

    def _agree(self, what, signature):
        """Raise on every rank if the ranks disagree on ``signature`` (a hashable
        description of the arrays about to be exchanged), instead of exchanging
        mismatched buffers."""
        sigs = self.comm.allgather(signature)
        bad = [r for r, s in enumerate(sigs) if s != sigs[0]]
        if bad:
            raise UserError(f"{what}: rank(s) {bad} hold different arrays than rank 0 "
                            f"({len(sigs[bad[0]])} vs {len(sigs[0])} entries); every rank must "
                            f"build the same model from the same config")

    def _buckets(self, arrays):
        """Group float32 arrays into runs of at most bucket_bytes; an array at least
        that large goes alone (and is sent in place)."""
        groups, cur, size = [], [], 0
        for a in arrays:
            if a.nbytes >= self.bucket_bytes:
                groups.append([a])
                continue
            if cur and size + a.nbytes > self.bucket_bytes:
                groups.append(cur)
                cur, size = [], 0
            cur.append(a)
            size += a.nbytes
        if cur:
            groups.append(cur)
        return groups

    def _bcast_arrays(self, arrays):
        """Overwrite every array with rank 0's, float32 ones in buckets."""
        f32 = [a for a in arrays if a.dtype == np.float32 and a.flags.c_contiguous]
        rest = [a for a in arrays if not (a.dtype == np.float32 and a.flags.c_contiguous)]
        for group in self._buckets(f32):
            if len(group) == 1:
                self.comm.Bcast(group[0], root=0)
                continue
            flat = np.concatenate([a.reshape(-1) for a in group]) if self.rank == 0 else \
                np.empty(sum(a.size for a in group), np.float32)
            self.comm.Bcast(flat, root=0)
            if self.rank != 0:
                off = 0
                for a in group:
                    a[...] = flat[off:off + a.size].reshape(a.shape)
                    off += a.size
        for a in rest:
            b = np.ascontiguousarray(a)
            self.comm.Bcast(b, root=0)
            if b is not a:
                a[...] = b

    def broadcast_model(self, net, mutator=None):
        state = net.state_dict()
        names = sorted(state)
        arrays = [state[k] for k in names]
        sig = [(k, state[k].shape, state[k].dtype.str) for k in names]
        if mutator is not None:
            alphas = [p.data for p in mutator.arch_parameters()]
            arrays += alphas
            sig += [("alpha", a.shape, a.dtype.str) for a in alphas]
        self._agree("broadcast_model", tuple(sig))
        self._bcast_arrays(arrays)
        self._synced_buffers = [v for _, v in net.named_buffers()
                                if v.dtype == np.float32 and v.flags.c_contiguous]

    def broadcast_buffers(self, net):
        bufs = [(k, v) for k, v in net.named_buffers()]
        self._agree("broadcast_buffers", tuple((k, v.shape, v.dtype.str) for k, v in bufs))
        self._bcast_arrays([v for _, v in bufs])

    def _plan(self, params):
        key = tuple(id(p) for p in params)
        plan = self._plans.get(key)
        if plan is None:
            self._agree("allreduce_grads", tuple((p.grad.shape, p.grad.dtype.str) for p in params))
            for p in params:
                if p.grad.dtype != np.float32 or not p.grad.flags.c_contiguous:
                    raise TypeError(f"allreduce_grads: gradient of shape {p.grad.shape} is not a "
                                    f"C-contiguous float32 array")
            plan = []
            idx = {id(p.grad): i for i, p in enumerate(params)}
            for group in self._buckets([p.grad for p in params]):
                members = [params[idx[id(g)]] for g in group]
                flat = None if len(members) == 1 else np.empty(sum(g.size for g in group), np.float32)
                plan.append((members, flat))
            self._plans[key] = plan
        return plan

    def allreduce_grads(self, params):
        """Average p.grad over ranks for every parameter (same list on every rank)."""
        params = list(params)
        if self.world_size == 1 or not params:
            return
        t0 = time.perf_counter()
        scale = np.float32(1.0 / self.world_size)
        SUM, IN_PLACE = self.MPI.SUM, self.MPI.IN_PLACE
        for members, flat in self._plan(params):
            if flat is None:
                g = members[0].grad
                self.comm.Allreduce(IN_PLACE, g, op=SUM)
                g *= scale
                self.allreduce_bytes += g.nbytes
                continue
            off = 0
            for p in members:
                flat[off:off + p.grad.size] = p.grad.reshape(-1)
                off += p.grad.size
            self.comm.Allreduce(IN_PLACE, flat, op=SUM)
            flat *= scale
            off = 0
            for p in members:
                p.grad[...] = flat[off:off + p.grad.size].reshape(p.grad.shape)
                off += p.grad.size
            self.allreduce_bytes += flat.nbytes
        if self._synced_buffers:
            self._bcast_arrays(self._synced_buffers)
        self.allreduce_seconds += time.perf_counter() - t0

    def allreduce_sum(self, array):
        """Sum a float64 array over ranks, in place (SyncBN's statistics)."""
        self.comm.Allreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)
        return array

    def sum_counts(self, correct, total):
        c = np.array(correct, dtype=np.int64)
        self.comm.Allreduce(self.MPI.IN_PLACE, c, op=self.MPI.SUM)
        return c, int(self.comm.allreduce(int(total), op=self.MPI.SUM))

    def abort(self, message):
        """Print why this rank fails and end every rank of the job."""
        sys.stdout.flush()
        print(f"rank {self.rank}/{self.world_size} failed: {message}", file=sys.stderr, flush=True)
        self.comm.Abort(1)


_group = None


def current():
    """The group made by the last init() (None before)."""
    return _group


def _set_threads(n):
    """Set OpenMP's and OpenBLAS's thread counts now (dmcp._C loaded them with the
    environment of process start) and in the environment of child processes."""
    import ctypes
    os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = str(n)
    for lib, fn in (("libgomp.so.1", "omp_set_num_threads"),
                    ("libopenblas.so.0", "openblas_set_num_threads")):
        try:
            getattr(ctypes.CDLL(lib), fn)(ctypes.c_int(n))
        except (OSError, AttributeError):
            pass


def _threads_per_rank(local_size):
    """OMP_NUM_THREADS when the launcher set it; else SLURM_CPUS_PER_TASK; else the
    CPUs this process may use, shared among the ranks on this node."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    cpt = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpt and cpt.isdigit() and int(cpt) > 0:
        return int(cpt)
    try:
        mine = len(os.sched_getaffinity(0))
    except AttributeError:
        mine = os.cpu_count() or 1
    if mine < (os.cpu_count() or mine):          # bound by the launcher: these CPUs are ours
        return max(1, mine)
    return max(1, mine // max(1, local_size))


def _import_mpi(launcher):
    try:
        import mpi4py
        mpi4py.rc.thread_level = "funneled"      # only the main thread calls MPI
        from mpi4py import MPI
    except Exception as e:  # noqa: BLE001 - ImportError, or the MPI library failing to load
        raise UserError(f"--launcher {launcher} needs mpi4py and an MPI library ({e}): "
                        f"pip install 'dmcp[dist]' and apt-get install openmpi-bin libopenmpi-dev") \
            from None
    return MPI


def init(launcher="none"):
    """The process group for ``launcher``: 'none', 'mpi' (mpirun) or 'slurm' (srun)."""
    global _group
    if launcher in (None, "none"):
        return SingleProcess()
    if launcher not in ("mpi", "slurm"):
        raise UserError(f"--launcher {launcher!r}: expected none, mpi or slurm")
    if _group is not None:
        return _group
    if launcher == "slurm" and "SLURM_PROCID" not in os.environ:
        raise UserError("--launcher slurm: SLURM_PROCID is not set; start the job with srun "
                        "(tools/slurm_train.sh) or use --launcher mpi under mpirun")
    MPI = _import_mpi(launcher)
    group = MPIGroup(MPI, launcher)
    if launcher == "slurm":
        ntasks = os.environ.get("SLURM_STEP_NUM_TASKS") or os.environ.get("SLURM_NTASKS")
        if ntasks and int(ntasks) != group.world_size:
            raise UserError(f"--launcher slurm: slurm started {ntasks} task(s) but MPI sees "
                            f"{group.world_size} process(es): start the tasks with srun "
                            f"--mpi=pmix (see srun --mpi=list), or use --launcher mpi under mpirun")
        procid = int(os.environ["SLURM_PROCID"])
        if procid != group.rank:
            raise UserError(f"--launcher slurm: SLURM_PROCID {procid} differs from MPI rank "
                            f"{group.rank}: under mpirun use --launcher mpi")
    n = _threads_per_rank(group.local_size)
    if n is not None:
        _set_threads(n)
    group.threads = int(os.environ.get("OMP_NUM_THREADS", "0")) or None
    _group = group
    return group


def abort_on_error(exc):
    """Called with the exception that is about to end a run: in a distributed run
    it takes every rank down (MPI_Abort) with a message naming this rank; a single
    process just lets the exception propagate."""
    if _group is None or _group.world_size == 1:
        return
    if isinstance(exc, SystemExit) and not exc.code:
        return
    if isinstance(exc, UserError) or type(exc).__name__ == "ConfigError":
        msg = f"error: {exc}"
    else:
        import traceback
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        msg = f"{type(exc).__name__}: {exc}"
    _group.abort(msg)
