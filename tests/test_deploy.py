"""The deployment benchmark's command line (tools/deploy_bench.py -> fasterbn.deploy.deploy_main), with the run itself faked:
where it writes, what it checks before it starts, and what its tables say. The run is exercised in nbs/13b_deploy.ipynb."""
import importlib.util, json
import pytest
import fasterbn.deploy as deploy

def _rec(model, variant, runtime, ratio=None, **kw):
    r = dict(model=model, batch=1, variant=variant, runtime=runtime, bn_total=2, bn_modules=0 if variant != 'unfolded' else 2,
             fp64_err=0. if variant == 'unfolded' else 1e-15, median_ms=10., cpu_s=[.01] * 3, wall_s=[.01] * 3)
    if ratio is not None: r |= dict(ratio=ratio, ratio_q1=ratio - .01, ratio_q3=ratio + .01)
    if runtime and runtime.startswith('ORT'): r |= dict(nodes=10, bn_nodes=0)
    return r | kw

def _fake_recs():
    recs = [_rec('resnet18', v, rt, 1. if v == 'unfolded' else .9) for v in ('unfolded', 'fasterbn') for rt in deploy.DEPLOY_RUNTIMES]
    recs[-3] = dict(recs[-3], error='SymbolicValueError: Unsupported: ONNX export of operator threshold, non-zero threshold.')
    recs[-3].pop('ratio'); recs[-3].pop('nodes')
    return recs + [dict(model='resnet18', batch=None, variant='broken', runtime=None, bn_total=2, error='RuntimeError: no')]

@pytest.fixture
def fake_run(monkeypatch):
    calls = []
    def run_deploy(*a, **k): calls.append((a, k)); return _fake_recs()
    monkeypatch.setattr(deploy, 'run_deploy', run_deploy)
    return calls

def test_tables():
    "The unfolded row in ms, every other row a ratio, failures as numbered notes; the graph table counts nodes and BatchNorm nodes."
    text = deploy.format_deploy(_fake_recs())
    lines = text.splitlines()
    assert lines[0] == '| model | variant | fp64 err | eager | ORT ts | ORT dynamo | torch.export |'
    assert lines[2] == '| resnet18 | unfolded | ref | 10.0 ms | 10.0 ms | 10.0 ms | 10.0 ms |'
    assert lines[3] == '| resnet18 | fasterbn | 1e-15 | 0.90 | fail (1) | 0.90 | 0.90 |'
    assert lines[4] == '| resnet18 | broken | fail (2) | — | — | — | — |'
    assert '| resnet18 | fasterbn | 0 | fail (1) | 10 (0) |' in text
    assert '1. SymbolicValueError: Unsupported: ONNX export of operator threshold' in text and '2. RuntimeError: no' in text

def test_full_run_writes_project_files(tmp_path, fake_run, capsys):
    "A full run refreshes the project's bench/deploy.md and bench/deploy.jsonl; the tables are printed."
    assert deploy.deploy_main(['--quiet'], project=tmp_path) == 0
    md, jsonl = tmp_path/'bench'/'deploy.md', tmp_path/'bench'/'deploy.jsonl'
    assert md.read_text().startswith('# fasterbn deployment benchmark') and '## Batch 1' in md.read_text()
    head, *recs = [json.loads(l) for l in jsonl.read_text().splitlines()]
    assert head['repeats'] == 15 and head['clock'] == 'process_time' and len(recs) == len(_fake_recs())
    assert '| resnet18 | fasterbn | 1e-15 | 0.90 |' in capsys.readouterr().out
    assert fake_run[0][0][0] == deploy.DEPLOY_MODELS

def test_partial_runs_write_only_where_asked(tmp_path, fake_run):
    for argv in (['--quick'], ['resnet18']):
        assert deploy.deploy_main(argv + ['--quiet'], project=tmp_path) == 0
    assert list(tmp_path.iterdir()) == []
    assert deploy.deploy_main(['resnet18', '--quiet', '--out', str(tmp_path/'d'/'x.md')], project=tmp_path) == 0
    assert [p.name for p in (tmp_path/'d').iterdir()] == ['x.md']

def test_checks_before_running(tmp_path, fake_run, capsys, monkeypatch):
    "A missing package or an unwritable target: one line on stderr, status 1, and the benchmark never starts."
    assert deploy.deploy_main(['--check'], project=tmp_path) == 0 and list(tmp_path.iterdir()) == []   # checks, then stops
    (tmp_path/'file').write_text('')
    assert deploy.deploy_main(['--out', str(tmp_path/'file'/'deploy.md')]) == 1
    err = capsys.readouterr().err
    assert err.startswith('python tools/deploy_bench.py: error: cannot write results file') and len(err.strip().splitlines()) == 1
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'onnxscript' else real(name, *a))
    assert deploy.deploy_main(['resnet18']) == 1
    err = capsys.readouterr().err
    assert 'missing onnxscript (for the dynamo ONNX exporter): pip install -e ".[dev]"' in err and len(err.strip().splitlines()) == 1
    assert fake_run == []
