"""How one plain training step (forward, cross-entropy, backward, SGD step; no
DMCP gates) scales with the thread count, and which parts do not.

Each (case, thread count n) runs in a fresh subprocess with OMP_NUM_THREADS and
OPENBLAS_NUM_THREADS set to n.  The worker wraps every callable of the module
dmcp._C, before the model is built, in a wall-clock accumulator keyed by the
function's name (the Python layer calls `_C.name(...)` through the module), so
each step splits into the time in every C kernel and the time outside C
(Python, NumPy allocation and copies).  Times are means over --steps, so the
parts add up to the step.

Validates first, on an untimed step: OpenMP and OpenBLAS run the requested
thread count, the loss is finite, the kernels every training step calls were
seen, no dmcp module holds an unwrapped _C function, and the C time is no more
than the step time (checked again on every timed step); and that step's loss
(same weights, same batch) must agree across the thread counts.

Reported per case: step time at each thread count; per kernel (those above 2%
of the step) its time and speed-up from the smallest to each larger count; the
time outside C; the Amdahl fit T(n) = T1 * (f + (1 - f)/n) by least squares
over the measured counts (1 and 2 threads: f = 2*T2/T1 - 1) with the speed-up
it predicts at 16 and 64 threads, 1/(f + (1 - f)/n); and f taken instead from
the "serial" part, time outside C plus the kernels that speed up less than 1.2x.

    python benchmarks/bench_scaling.py [--cases r50b16 mbv2b32 r20b64] [--threads 1 2]
                                       [--steps 3] [--warmup 1] [--markdown FILE]
"""
import argparse
import collections
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
from bench_train_step import CASES, DmcpStep, batch  # noqa: E402
from timing import describe_machine, dmcp_native  # noqa: E402

DEFAULT_CASES = ["r50b16", "mbv2b32", "r20b64"]
SHOWN_SHARE = 0.02       # kernels above this share of the step get a row
SERIAL_SPEEDUP = 1.2     # kernels below this speed-up count as serial
PREDICT_AT = (16, 64)
MUST_CALL = ("conv2d_forward", "conv2d_backward", "sgd_step")   # every plain step does


class CClock:
    """Wraps every callable of dmcp._C in place; seconds[name] and calls[name]
    accumulate until reset()."""

    def __init__(self):
        from dmcp import _C
        self.seconds = collections.defaultdict(float)
        self.calls = collections.Counter()
        self.originals = {}
        for name in dir(_C):
            fn = getattr(_C, name)
            if not name.startswith("__") and callable(fn):
                self.originals[id(fn)] = (fn, self._timed(name, fn))
                setattr(_C, name, self.originals[id(fn)][1])
        self.rebind()

    def _timed(self, name, fn):
        seconds, calls, clock = self.seconds, self.calls, time.perf_counter

        def timed(*args, **kwargs):
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[name] += clock() - t0
                calls[name] += 1
        timed.__name__ = timed.__qualname__ = name
        return timed

    def rebind(self):
        """Wrap any `from dmcp._C import name` binding in a dmcp module too; returns
        how many it found."""
        found = 0
        for mod in [m for k, m in list(sys.modules.items()) if k == "dmcp" or k.startswith("dmcp.")]:
            for attr, val in list(vars(mod).items()):
                if id(val) in self.originals and self.originals[id(val)][0] is val:
                    setattr(mod, attr, self.originals[id(val)][1])
                    found += 1
        return found

    def reset(self):
        self.seconds.clear()
        self.calls.clear()


def timed_step(step, clock, x, y):
    clock.reset()
    t0 = time.perf_counter()
    loss = step(x, y)
    dt = time.perf_counter() - t0
    c_total = sum(clock.seconds.values())
    if c_total > dt:
        raise SystemExit(f"C kernels took {c_total:.4f} s of a {dt:.4f} s step: the clock is wrong")
    return dt, loss, dict(clock.seconds), dict(clock.calls)


def worker(case, steps, warmup):
    threads = int(os.environ["OMP_NUM_THREADS"])
    import dmcp  # noqa: F401  (its import sets the allocator and thread env first)
    clock = CClock()
    step = DmcpStep(CASES[case][0])
    x, y = batch(case)

    dt, loss, seconds, calls = timed_step(step, clock, x, y)       # the validation step
    nat = dmcp_native()
    problems = []
    if (nat["omp_threads"], nat.get("openblas_threads")) != (threads, threads):
        problems.append(f"asked for {threads} threads, OpenMP runs {nat['omp_threads']}, "
                        f"OpenBLAS {nat.get('openblas_threads')}")
    if not math.isfinite(loss):
        problems.append(f"loss {loss}")
    missing = [k for k in MUST_CALL if not calls.get(k)]
    if missing:
        problems.append(f"no timed calls of {', '.join(missing)}: dmcp no longer calls _C.<name>")
    if clock.rebind():
        problems.append("a dmcp module imported a _C function directly after the clock was set")
    if problems:
        raise SystemExit(f"{case} at {threads} threads: " + "; ".join(problems))

    for _ in range(warmup):
        step(x, y)
    cpu0 = os.times()
    runs = [timed_step(step, clock, x, y) for _ in range(steps)]
    cpu1 = os.times()
    names = sorted({k for r in runs for k in r[2]})
    print(json.dumps(dict(
        check=dict(loss=float(loss), step=dt, c=sum(seconds.values()), functions=len(calls),
                   omp=nat["omp_threads"], openblas=nat.get("openblas_threads")),
        step=sum(r[0] for r in runs) / steps,
        cpu=(cpu1.user + cpu1.system - cpu0.user - cpu0.system) / steps,
        kernels={k: sum(r[2].get(k, 0.0) for r in runs) / steps for k in names},
        calls={k: sum(r[3].get(k, 0) for r in runs) / steps for k in names})))


def run_worker(case, threads, args):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, __file__, "--worker", "--cases", case,
                          "--steps", str(args.steps), "--warmup", str(args.warmup)],
                         env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{case} at {threads} threads failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def amdahl_fit(ns, ts):
    """Least-squares T(n) = a + b/n; returns (T1, f) with T1 = a + b, f = a / T1."""
    a, b = np.linalg.lstsq(np.array([[1.0, 1.0 / n] for n in ns]), np.array(ts), rcond=None)[0]
    return a + b, a / (a + b)


def predicted_speedup(f, n):
    """1/(f + (1-f)/n), f clamped to [0, 1] (a fit can leave it outside)."""
    f = min(max(f, 0.0), 1.0)
    return 1.0 / (f + (1.0 - f) / n)


def analyse(case, ns, got):
    """The case's Markdown kernel table and its summary numbers."""
    n0, nmax = ns[0], ns[-1]
    step = {n: got[n]["step"] for n in ns}
    kern = {n: got[n]["kernels"] for n in ns}
    outside = {n: step[n] - sum(kern[n].values()) for n in ns}
    for n in ns:
        if outside[n] < 0:
            raise SystemExit(f"{case} at {n} threads: C kernels add up to more than the step")
    names = sorted(set().union(*(kern[n] for n in ns)), key=lambda k: -kern[n0].get(k, 0.0))

    larger = ns[1:]
    per = {k: {n: kern[n].get(k, 0.0) for n in ns} for k in names}
    # serial: speeds up less than SERIAL_SPEEDUP from the smallest to the largest count
    serial_kernels = [k for k in names
                      if larger and per[k][n0] < SERIAL_SPEEDUP * per[k][nmax]]
    shown = [k for k in names if max(per[k][n] / step[n] for n in ns) > SHOWN_SHARE]
    rest = [k for k in names if k not in shown]
    head = (["part", "calls/step"] + [f"ms @{n}" for n in ns]
            + [f"speed-up {n0}->{n}" for n in larger] + [f"% of step @{n0}", "serial"])
    lines = [f"### {case} ({CASES[case][0]}, batch {CASES[case][1]}): one plain training step", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(label, calls, t, serial=""):
        cells = [label, calls] + [f"{1e3 * t[n]:.2f}" for n in ns]
        cells += [f"{t[n0] / t[n]:.2f}x" if t[n] > 0 else "-" for n in larger]
        cells += [f"{100 * t[n0] / step[n0]:.1f}", serial]
        lines.append("| " + " | ".join(cells) + " |")

    for k in shown:
        row(f"`{k}`", f"{got[n0]['calls'][k]:.0f}" if k in got[n0]["calls"] else "-", per[k],
            "yes" if k in serial_kernels else "")
    if rest:
        row(f"other C ({len(rest)} kernels)", f"{sum(got[n0]['calls'].get(k, 0) for k in rest):.0f}",
            {n: sum(per[k][n] for k in rest) for n in ns},
            f"{sum(k in serial_kernels for k in rest)} of {len(rest)}")
    row("outside C (Python, NumPy)", "", outside, "yes")
    row("**step**", "", step)

    summary = dict(step=step)
    if larger:
        t1, f_fit = amdahl_fit(ns, [step[n] for n in ns])
        serial = outside[n0] + sum(per[k][n0] for k in serial_kernels)
        # serial time is the same at every n; the rest ran n0 times faster than on 1 thread
        f_serial = serial / (serial + n0 * (step[n0] - serial))
        summary.update(t1=t1, f_fit=f_fit, f_serial=f_serial)
        lines += ["", f"Amdahl fit over {', '.join(map(str, ns))} threads: T1 {1e3 * t1:.1f} ms, "
                  f"serial fraction f = {f_fit:.3f} -> speed-up "
                  + ", ".join(f"{predicted_speedup(f_fit, m):.1f}x at {m}" for m in PREDICT_AT)
                  + f". Serial part (outside C + kernels under {SERIAL_SPEEDUP}x, "
                  f"{1e3 * serial:.1f} ms at {n0}): f = {f_serial:.3f} -> "
                  + ", ".join(f"{predicted_speedup(f_serial, m):.1f}x at {m}" for m in PREDICT_AT)
                  + "."]
    return lines, summary


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cases", nargs="+", default=DEFAULT_CASES, choices=list(CASES))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--markdown", help="append the tables to this file")
    args = p.parse_args()
    if args.worker:
        return worker(args.cases[0], args.steps, args.warmup)
    if args.steps < 1 or min(args.threads) < 1:
        p.error("--steps and every --threads must be at least 1")

    ns = sorted(set(args.threads))
    header = describe_machine(", ".join(map(str, ns))
                              + " (one subprocess each, OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=n)")
    print("\n".join(header), flush=True)
    out, summaries = [], {}
    for case in args.cases:
        got = {}
        for n in ns:
            got[n] = run_worker(case, n, args)
            c = got[n]["check"]
            print(f"  validate {case} @{n}: OpenMP {c['omp']} / OpenBLAS {c['openblas']} threads, "
                  f"first-step loss {c['loss']:.6f}, {c['functions']} C functions timed, "
                  f"{1e3 * c['c']:.1f} of {1e3 * c['step']:.1f} ms in C -> ok", flush=True)
        losses = [got[n]["check"]["loss"] for n in ns]
        if max(losses) - min(losses) > 1e-4 * max(1.0, abs(losses[0])):
            raise SystemExit(f"{case}: the first step's loss depends on the thread count: {losses}")
        for n in ns:
            print(f"  {case} @{n} threads: step {1e3 * got[n]['step']:.1f} ms, in C "
                  f"{1e3 * sum(got[n]['kernels'].values()):.1f} ms, CPU time / wall time "
                  f"{got[n]['cpu'] / got[n]['step']:.2f} (near n unless the threads wait or "
                  "others hold the CPUs)", flush=True)
        lines, summaries[case] = analyse(case, ns, got)
        print("\n" + "\n".join(lines) + "\n", flush=True)
        out += [""] + lines
    larger = ns[1:]
    head = (["case"] + [f"step ms @{n}" for n in ns] + [f"speed-up {ns[0]}->{n}" for n in larger])
    if larger:
        head += ["f (fit)"] + [f"S({m})" for m in PREDICT_AT]
        head += ["f (serial part)"] + [f"S({m}) serial part" for m in PREDICT_AT]
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for case, s in summaries.items():
        cells = [case] + [f"{1e3 * s['step'][n]:.1f}" for n in ns]
        cells += [f"{s['step'][ns[0]] / s['step'][n]:.2f}x" for n in larger]
        if larger:
            for f in (s["f_fit"], s["f_serial"]):
                cells += [f"{f:.3f}"] + [f"{predicted_speedup(f, m):.1f}x" for m in PREDICT_AT]
        table.append("| " + " | ".join(cells) + " |")
    print("\n".join(table))
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write("\n".join([""] + header + out + [""] + table) + "\n")


if __name__ == "__main__":
    main()
