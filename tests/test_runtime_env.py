"""What `import dmcp` sets up for speed, and that the user can override it:
OpenBLAS core type and idle-thread timeout, OpenMP wait policy, and glibc
keeping freed activation memory."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = """
import json, os
import numpy as np
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
print(json.dumps({k: os.environ.get(k) for k in
                  ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY")} | {"in_heap": in_heap}))
"""


def probe(**env):
    full = {k: v for k, v in os.environ.items()
            if k not in ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY", "DMCP_KEEP_FREED_MEMORY")}
    full.update(env, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", PROBE], env=full, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_defaults_and_kept_memory():
    got = probe()
    assert got["OPENBLAS_THREAD_TIMEOUT"] == "4"
    assert got["OMP_WAIT_POLICY"] == "PASSIVE"
    assert got["in_heap"], got


def test_user_choices_win():
    got = probe(OPENBLAS_THREAD_TIMEOUT="20", OMP_WAIT_POLICY="ACTIVE", DMCP_KEEP_FREED_MEMORY="0")
    assert got["OPENBLAS_THREAD_TIMEOUT"] == "20"
    assert got["OMP_WAIT_POLICY"] == "ACTIVE"
    assert not got["in_heap"], got       # glibc's default: a fresh mapping


def test_keep_freed_memory_reports_success():
    from dmcp import _C
    assert _C.keep_freed_memory() is True
