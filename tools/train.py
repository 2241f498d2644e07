"""Train from a config: a DMCP supernet search, a pruned sub_model, or a plain classifier.

    python tools/train.py CONFIG [--work-dir DIR] [--cfg-options k=v ...] [--resume [CKPT]]
                                 [--launcher none|mpi|slurm]
"""
import sys

from dmcp.cli import run, train_main

if __name__ == "__main__":
    sys.exit(run(train_main))
