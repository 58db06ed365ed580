"""tools/zoo.py, the sweep behind `make zoo`, on two small models: it runs, writes its two files, and its numbers hold together.

The counts of the full sweep live in bench/zoo.md; here only what cannot change with the planner is pinned (resnet18 folds whole)."""
import json, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def test_sweep_two_models(tmp_path):
    cmd = [sys.executable, str(ROOT/'tools'/'zoo.py'), '--models', 'tv/resnet18', 'timm/tf_efficientnet_lite0',
           '--out', str(tmp_path), '--jobs', '2', '--timeout', '240']
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = [json.loads(l) for l in (tmp_path/'zoo-partial.jsonl').read_text().splitlines()]
    assert 'run' in lines[0]
    recs = {r['id']: r for r in lines[1:]}
    assert set(recs) == {'tv/resnet18', 'timm/tf_efficientnet_lite0'}
    assert all(r['status'] == 'ok' and r['exact'] and r['rel_err'] <= 1e-9 for r in recs.values()), recs
    r = recs['tv/resnet18']
    assert (r['folded'], r['total'], r['fuse_folded'], r['not_folded']) == (20, 20, 20, [])
    t = recs['timm/tf_efficientnet_lite0']   # Conv2dSame pads by input size, so fx cannot trace it: fuse folds none
    assert t['total'] == 49 and t['fuse_folded'] == 0 and 'TraceError' in t['fuse_error']
    assert t['folded'] + len(t['not_folded']) == t['total']
    assert all(nf['kind'] and nf['pattern'] and nf['reason'] for nf in t['not_folded'])
    md = (tmp_path/'zoo-partial.md').read_text()
    assert '## Summary' in md and '| tv/resnet18 |' in md and '| timm/tf_efficientnet_lite0 |' in md
    assert all(f"| {nf['kind']} |" in md for nf in t['not_folded'])
