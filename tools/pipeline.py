"""The default main job: DMCP search on Fashion-MNIST, retraining of the pruned
ResNet-20, evaluation, and a result table.

    python tools/pipeline.py [--work-dir work_dirs/pipeline] [--cfg-options k=v ...]
"""
import sys

from dmcp.cli import pipeline_main, run

if __name__ == "__main__":
    sys.exit(run(pipeline_main))
