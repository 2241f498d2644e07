"""dmcp: Differentiable Markov Channel Pruning on CPUs.

The C core (``dmcp._C``) runs every layer, the Markov gates, expected FLOPs and
the optimisers on NumPy arrays with OpenMP and OpenBLAS; this package parses
mmrazor-style configs and orchestrates search, sampling and retraining.
"""
import os


def _pick_openblas_kernels():
    """Debian's OpenBLAS 0.3.21 takes Zen 4/5 CPUs for Haswell and runs AVX2
    kernels; its SkylakeX kernels are about twice as fast there.  Ask for them
    when the CPU (as the kernel reports it) has AVX-512, unless the user chose
    a core type.  Must run before libopenblas is loaded by dmcp._C."""
    if "OPENBLAS_CORETYPE" in os.environ:
        return
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
            else:
                return
    except OSError:
        return
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"


_pick_openblas_kernels()


def _set_wait_policy():
    """How idle OpenMP threads wait; libgomp reads it when dmcp._C loads it.
    Built on OpenMP-threaded OpenBLAS (dmcp/_build.py), every kernel and GEMM
    runs on one pool, and a worker that spins for about a millisecond
    (GOMP_SPINCOUNT=100000) picks up the next kernel at once: a ResNet-20 step
    runs 21-27% faster than on the pthreads OpenBLAS with workers that sleep at
    once, ResNet-50 1-12% (benchmarks/RESULTS.md).  With another OpenBLAS its own threads would fight
    spinning workers for the cores (ResNet-50 20% slower), so they sleep at once
    (OMP_WAIT_POLICY=PASSIVE) and OpenBLAS's idle threads give up after 2^4
    cycles (OPENBLAS_THREAD_TIMEOUT=4; they spin 2^28 by default).  A choice
    the user made in the environment wins."""
    try:
        from ._build import BLAS_THREADING
    except ImportError:          # built some other way
        BLAS_THREADING = "other"
    if BLAS_THREADING != "openmp":
        os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    if BLAS_THREADING == "openmp":
        os.environ["GOMP_SPINCOUNT"] = "100000"
    else:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


_set_wait_policy()

try:
    from . import _C  # noqa: E402  (after the core-type choice)
except ImportError as _e:  # a source checkout without the built extension
    raise ImportError(f"dmcp._C is not built next to {os.path.dirname(__file__)} ({_e}); "
                      "run `pip install -e .` in the checkout (or `pip install .` and import "
                      "dmcp from outside the source tree)") from None
if os.environ.get("DMCP_ISA"):
    # the kernels' instruction set: the best the CPU has unless chosen (base, avx2, avx512)
    _C.set_isa(os.environ["DMCP_ISA"])
if os.environ.get("DMCP_KEEP_FREED_MEMORY", "1") != "0":
    _C.keep_freed_memory()
from . import nn  # noqa: E402
from .algorithm import DMCP, build_algorithm_model as build_model, build_pruned  # noqa: E402
from .config import Config, ConfigError  # noqa: E402
from .flops import count_flops  # noqa: E402
from .models import ImageClassifier  # noqa: E402
from .units import Mutator, UserError  # noqa: E402

__version__ = "0.1.0"
