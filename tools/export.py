"""Write a pruned network that holds only its channels (ONNX, slim .pth or .npz).

    python tools/export.py CONFIG CHECKPOINT --out PATH [--subnet FIX_SUBNET.json]
        [--format onnx|pth|npz] [--shape H [W]] [--divisor N] [--opset N]
"""
import sys

from dmcp.cli import run
from dmcp.export import export_main

if __name__ == "__main__":
    sys.exit(run(export_main))
