"""What `import dmcp` sets up for speed, and that the user can override it:
OpenBLAS core type, how idle OpenMP (and OpenBLAS) threads wait, and glibc
keeping freed activation memory."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WAIT_ENV = ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
PROBE = f"WAIT_ENV = {WAIT_ENV!r}\n" + """
import json, os, sys, types
import numpy as np
if os.environ.get("FAKE_BLAS_THREADING"):   # as if dmcp._C had been built on that OpenBLAS
    sys.modules["dmcp._build"] = types.SimpleNamespace(BLAS_THREADING=os.environ["FAKE_BLAS_THREADING"])
import dmcp
# where glibc put a large block: the heap (reusable after free, no page
# faults next step) or a fresh mapping (glibc's default above 32 MiB)
a = np.ones(64 << 20, np.uint8)
addr = a.ctypes.data
in_heap = False
with open("/proc/self/maps") as f:
    for line in f:
        if line.rstrip().endswith("[heap]"):
            lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
            in_heap |= lo <= addr < hi
print(json.dumps({k: os.environ.get(k) for k in WAIT_ENV} | {"in_heap": in_heap}))
"""


def probe(**env):
    full = {k: v for k, v in os.environ.items()
            if k not in WAIT_ENV + ("DMCP_KEEP_FREED_MEMORY",)}
    full.update(env, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", PROBE], env=full, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_defaults_and_kept_memory():
    from dmcp._build import BLAS_THREADING
    got = probe()
    if BLAS_THREADING == "openmp":     # one pool: idle workers spin a while
        assert got["GOMP_SPINCOUNT"] == "100000" and got["OMP_WAIT_POLICY"] is None, got
        assert got["OPENBLAS_THREAD_TIMEOUT"] is None, got
    else:
        assert got["OMP_WAIT_POLICY"] == "PASSIVE" and got["GOMP_SPINCOUNT"] is None, got
        assert got["OPENBLAS_THREAD_TIMEOUT"] == "4", got
    assert got["in_heap"], got


def test_other_openblas_sleeps_at_once():
    got = probe(FAKE_BLAS_THREADING="other")
    assert got["OMP_WAIT_POLICY"] == "PASSIVE" and got["GOMP_SPINCOUNT"] is None, got
    assert got["OPENBLAS_THREAD_TIMEOUT"] == "4", got
    got = probe(FAKE_BLAS_THREADING="openmp")
    assert got["GOMP_SPINCOUNT"] == "100000" and got["OMP_WAIT_POLICY"] is None, got


def test_user_choices_win():
    got = probe(OPENBLAS_THREAD_TIMEOUT="20", OMP_WAIT_POLICY="ACTIVE", DMCP_KEEP_FREED_MEMORY="0")
    assert got["OPENBLAS_THREAD_TIMEOUT"] == "20"
    assert got["OMP_WAIT_POLICY"] == "ACTIVE" and got["GOMP_SPINCOUNT"] is None, got
    assert not got["in_heap"], got       # glibc's default: a fresh mapping
    got = probe(GOMP_SPINCOUNT="0", FAKE_BLAS_THREADING="openmp")
    assert got["GOMP_SPINCOUNT"] == "0" and got["OMP_WAIT_POLICY"] is None, got


def test_the_openblas_dmcp_was_built_on_is_the_one_it_runs():
    """Built on OpenMP-threaded OpenBLAS, the run path must win over the system's
    default libopenblas.so.0 (another build): spinning workers assume one pool."""
    import ctypes
    from dmcp import _C  # noqa: F401  (maps dmcp's OpenBLAS)
    from dmcp._build import BLAS_THREADING
    if BLAS_THREADING != "openmp":
        return
    with open("/proc/self/maps") as f:
        paths = {line.split()[-1] for line in f if "libopenblas" in line.split()[-1]}
    ours = [p for p in paths if "numpy" not in p and "torch" not in p]
    assert ours and all("openblas-openmp" in p for p in ours), paths
    assert ctypes.CDLL(ours[0]).openblas_get_parallel() == 2     # 2: OpenMP


def test_keep_freed_memory_reports_success():
    from dmcp import _C
    assert _C.keep_freed_memory() is True
