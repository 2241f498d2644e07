"""The default main job: DMCP search on Fashion-MNIST, retraining of the pruned
ResNet-20, evaluation, and a result table.

    python tools/pipeline.py [--work-dir work_dirs/pipeline] [--cfg-options k=v ...]
"""
import sys

from dmcp.cli import run
from dmcp.pipeline import pipeline_main

if __name__ == "__main__":
    sys.exit(run(lambda argv: 0 if pipeline_main(argv) else 1))
