"""Sample pruned structures again from a DMCP supernet checkpoint: direct samples
within 5% of the target (or the closest, with a warning), expected_ch.json and the
charts, into WORK_DIR/model_sample/.

    python tools/sample_subnets.py CONFIG CHECKPOINT [--num N] [--target MFLOPS]
                                   [--max-draws N] [--seed S] [--work-dir DIR]
"""
import sys

from dmcp.cli import run, sample_main

if __name__ == "__main__":
    sys.exit(run(sample_main))
