#!/usr/bin/env python
"""The project's deployment benchmark (the end of `make bench`): latency of unfolded, folded and re-parameterized models in eager
PyTorch, ONNX Runtime (TorchScript and dynamo exporters) and torch.export, timed side by side.

    python tools/deploy_bench.py [--quick] [--repeats N] [--batch-sizes 1,8] [models...]

A full run (no --quick, model names, --out or --jsonl) refreshes the project's published results, bench/deploy.md and
bench/deploy.jsonl, found from this script's location; other runs write only where --out/--jsonl say.
The code lives in fasterbn/deploy.py, exported from nbs/13b_deploy.ipynb.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from fasterbn.deploy import deploy_main

if __name__ == '__main__': sys.exit(deploy_main(prog='python tools/deploy_bench.py', project=ROOT))
