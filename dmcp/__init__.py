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
# OpenMP loops (im2col, BN, ...) alternate with OpenBLAS's own threads; idle
# OpenMP workers that spin steal the 2 cores from the GEMM (measured: 3x3 conv
# forward 21 -> 90 GFLOP/s with a passive wait).  libgomp reads this at load.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The other side of the same contention: OpenBLAS's idle threads spin on
# sched_yield for 2^28 cycles by default after every GEMM, while the OpenMP
# loops that follow need both cores.  2^4 cycles: MobileNetV2 batch-32 step
# 0.5 CPU-s less system time, about 25% faster (benchmarks/RESULTS.md).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

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
