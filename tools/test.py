"""Top-1/top-5 of a checkpoint on the config's test (or val) set.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--cfg-options k=v ...]
"""
import sys

from dmcp.cli import run, test_main

if __name__ == "__main__":
    sys.exit(run(test_main))
