"""Run the fuzz targets (tests/fuzz/targets.py) under atheris/libFuzzer.

    python tests/fuzz/run.py [--seconds N] [--crashes DIR] [TARGET...]
    python tests/fuzz/run.py --replay TARGET FILE...

Each target runs for N seconds (default 10) in its own subprocess, seeded from
tests/fuzz/corpus/<target>/ (never written: new inputs go to a temporary
folder), with a 2048 MB memory limit (above the worker's start-up peak) and
-timeout=10.  Prints the executions and findings per target; a finding's input
is saved to the crashes folder (named on the way out) and the exit status is 1.  --replay runs saved inputs through
a target in this process and prints what each raises.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import namedtuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(HERE, "corpus")
REGRESSIONS = os.path.join(HERE, "regressions")
TARGET_NAMES = ("config", "subnet", "pth", "npz", "image", "kernels")
EXTRA_INSTRUMENTED = {"pth": ["zipfile"], "npz": ["zipfile", "numpy.lib"]}
RSS_LIMIT_MB = 2048     # memory a target may use above the worker's own start-up peak
LIBFUZZER_FLAGS = ("-timeout=10", "-print_final_stats=1")

Result = namedtuple("Result", "target execs seconds findings log returncode")


def fuzz(target, seconds, crashes, extra_flags=()):
    """Fuzz one target for `seconds` in a subprocess; its findings' inputs go to `crashes`."""
    os.makedirs(crashes, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f"dmcp-fuzz-{target}-")
    log = os.path.join(crashes, f"{target}.log")
    before = set(os.listdir(crashes))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", target, "--seconds",
           str(seconds), "--crashes", crashes, "--work", work, *extra_flags]
    start = time.monotonic()
    try:
        with open(log, "w") as f:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                                  timeout=seconds + 120)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "hung"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - start
    with open(log, errors="replace") as f:
        text = f.read()
    m = re.findall(r"stat::number_of_executed_units:\s*(\d+)", text) or \
        re.findall(r"Done (\d+) runs", text)
    execs = int(m[-1]) if m else 0
    findings = sorted(os.path.join(crashes, n) for n in set(os.listdir(crashes)) - before
                      if n.startswith(f"{target}-"))
    if rc != 0 and not findings:       # died without an artifact (harness error, hang)
        findings = [f"{log} (exit status {rc}, no input saved)"]
    return Result(target, execs, elapsed, findings, log, rc)


def _rss_limit_mb():
    """libFuzzer checks the process's peak RSS (getrusage), and Linux carries the
    parent's resident size at fork into the child's peak across exec: a worker
    started from a large pytest process begins 'using' gigabytes.  So the limit
    is RSS_LIMIT_MB above the peak the worker has when fuzzing starts."""
    import resource
    start_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024   # KiB on Linux
    return start_mb + RSS_LIMIT_MB


def _worker(args):
    import atheris
    sys.path.insert(0, HERE)
    # coverage from dmcp, the harness's own shape logic and the pure-Python readers
    # under dmcp (the C extension and C parsers give none); numpy.lib's .npy header
    # parser costs 8 s of start-up, so only runs of 30 s or more get it
    include = ["dmcp", "targets"] + EXTRA_INSTRUMENTED.get(args.worker, [])
    if args.seconds < 30:
        include = [m for m in include if m != "numpy.lib"]
    with atheris.instrument_imports(include=include):
        import targets
    seeds = os.path.join(CORPUS, args.worker)
    argv = [sys.argv[0], f"-max_total_time={args.seconds}", f"-rss_limit_mb={_rss_limit_mb()}",
            f"-artifact_prefix={os.path.join(args.crashes, args.worker)}-", *LIBFUZZER_FLAGS,
            *args.libfuzzer, args.work] + ([seeds] if os.path.isdir(seeds) else [])
    atheris.Setup(argv, targets.fuzz_entry(args.worker))
    atheris.Fuzz()


def replay(target, paths):
    """Run saved inputs through `target` here; returns the number that raised."""
    import traceback
    sys.path.insert(0, HERE)
    import targets
    bad = 0
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        try:
            targets.check(target, data)
            print(f"{path}: ok")
        except BaseException:        # noqa: B902  (a finding is whatever escapes)
            bad += 1
            print(f"{path}: FINDING")
            traceback.print_exc()
    return bad


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("targets", nargs="*", metavar="TARGET",
                    help=f"targets to run (default: all of {', '.join(TARGET_NAMES)})")
    ap.add_argument("--seconds", type=int, default=10, help="fuzzing time per target (10)")
    ap.add_argument("--crashes", default=None,
                    help="where findings' inputs and logs go (default: a new temporary folder)")
    ap.add_argument("--replay", metavar="TARGET", help="replay the FILE arguments through TARGET")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--libfuzzer", action="append", default=[],
                    help="an extra libFuzzer flag, e.g. --libfuzzer=-seed=1 (repeatable)")
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    if args.replay:
        return 1 if replay(args.replay, args.targets) else 0
    unknown = [t for t in args.targets if t not in TARGET_NAMES]
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGET_NAMES)}")
    crashes = os.path.abspath(args.crashes or tempfile.mkdtemp(prefix="dmcp-fuzz-crashes-"))
    total = 0
    for target in args.targets or TARGET_NAMES:
        r = fuzz(target, args.seconds, crashes, [f"--libfuzzer={f}" for f in args.libfuzzer])
        total += len(r.findings)
        print(f"{target:8s} {r.execs:9d} executions in {r.seconds:5.1f} s  "
              f"{len(r.findings)} finding(s)", flush=True)
        for path in r.findings:
            print(f"         {path}")
        if r.findings:
            print(_tail(r.log), flush=True)
    print(f"findings: {total}; inputs and logs in {crashes}")
    return 1 if total else 0


def _tail(log, lines=30):
    with open(log, errors="replace") as f:
        text = f.read().splitlines()
    start = next((i for i, t in enumerate(text) if "Uncaught Python exception" in t
                  or "ERROR: libFuzzer" in t or "ERROR: AddressSanitizer" in t), len(text) - lines)
    return "\n".join("         | " + t for t in text[max(start, 0):start + lines])


if __name__ == "__main__":
    sys.exit(main())
