#!/usr/bin/env python
"""The project's own benchmark run (`make bench`): fasterbn vs torch.fx fuse, quantize_fx.fuse_fx, fasterai, side by side.

    python tools/benchmark.py [--quick | --fold-only] [--repeats N] [models...]

A full run (no --quick, --fold-only or model names) refreshes the project's published results, bench/results.md and
nbs/images/benchmark.png, found from this script's location; other runs write only where --out-dir/--out/--plot say.
`fasterbn bench` runs the same benchmark and writes into ./fasterbn-bench instead.
The code lives in fasterbn/bench.py, exported from nbs/13_benchmark.ipynb.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import matplotlib; matplotlib.use('Agg')
from fasterbn.bench import bench_main

if __name__ == '__main__': sys.exit(bench_main(prog='python tools/benchmark.py', project=ROOT))
