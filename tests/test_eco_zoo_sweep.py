"""tools/eco_zoo.py, the sweep behind `make zoo-eco`, on two small models of libraries that are installed: it runs, writes its two
files, and its numbers hold together.

The counts of the full sweep live in bench/eco_zoo.md; here only what cannot change with the planner is pinned (a model that folds whole)."""
import importlib.util, json, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
# (model id, its library's import name), smallest first; fastai comes with the dev extra, the others with `pip install -e ".[eco]"`
CANDIDATES = [('fastai/tabular', 'fastai'), ('sb/Xvector', 'speechbrain'), ('hf/mobilenet_v1-no-tf-padding', 'transformers'),
              ('yolo/yolov8n-cls', 'ultralytics'), ('monai/UNet', 'monai'), ('smp/FPN-resnet18', 'segmentation_models_pytorch'),
              ('fastai/vision-resnet18', 'fastai')]

def test_sweep_two_models(tmp_path):
    ids = [i for i, mod in CANDIDATES if importlib.util.find_spec(mod)][:2]
    if len(ids) < 2: pytest.skip('needs at least one of fastai, speechbrain, transformers, ultralytics, monai, segmentation_models_pytorch')
    cmd = [sys.executable, str(ROOT/'tools'/'eco_zoo.py'), '--models', *ids, '--out', str(tmp_path), '--jobs', '2', '--timeout', '240']
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = [json.loads(l) for l in (tmp_path/'eco_zoo-partial.jsonl').read_text().splitlines()]
    assert 'run' in lines[0] and set(lines[0]['run']['ids']) == set(ids)
    recs = {r['id']: r for r in lines[1:]}
    assert set(recs) == set(ids)
    for r in recs.values():
        assert r['status'] == 'ok', r
        assert r['bn'] > 0 and r['rows'] + len(r['missing']) == r['bn'] and r['folded'] + len(r['not_folded']) == r['rows']
        assert r['noinputs']['folded'] <= r['bn'] and 0 <= r['fuse_folded'] <= r['bn']
        assert all(nf['kind'] and nf['pattern'] and nf['reason'] for nf in r['not_folded'] + r['noinputs']['not_folded'])
        for check in (r['check'], r['check_noinputs']):   # float64, on the example and on another batch and size
            assert check['exact'] and check['err'] <= 1e-9 and (check.get('guarded') or check['err_other'] <= 1e-9), r
        assert r['input'] != r['input_other']
    if 'fastai/tabular' in recs:   # Linear -> BatchNorm1d twice, and the continuous inputs' BatchNorm1d into the first Linear
        r = recs['fastai/tabular']
        assert (r['bn'], r['folded'], r['missing']) == (3, 3, [])
    md = (tmp_path/'eco_zoo-partial.md').read_text()
    assert '## Summary' in md and '## Per model' in md and all(f'| {i} |' in md for i in ids)
    assert all(f"| {nf['kind']} |" in md for r in recs.values() for nf in r['not_folded'])
