"""The one timing helper the benchmarks share."""
import statistics
import time


def median_seconds(fn, reps, warmup=0):
    """Median wall time of ``reps`` calls of fn, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)
