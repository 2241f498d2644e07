"""Conv+linear multiply-accumulates and parameters of a config's model.

    python tools/get_flops.py CONFIG [--subnet FIX_SUBNET.json] [--shape H [W]] [--json]
"""
import sys

from dmcp.cli import get_flops_main, run

if __name__ == "__main__":
    sys.exit(run(get_flops_main))
