#!/usr/bin/env python
"""Print the BatchNorm-folding benchmark table (fasterbn vs torch.fx fuse, quantize_fx.fuse_fx, fasterai).

    python tools/benchmark.py [--quick] [--repeats N] [models...]

A full run (no --quick, no model names) also writes bench/results.md and nbs/images/benchmark.png.
The code lives in fasterbn/bench.py, exported from nbs/06_benchmark.ipynb.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import matplotlib; matplotlib.use('Agg')
from fasterbn.bench import bench_main

if __name__ == '__main__': sys.exit(bench_main(root=ROOT))
