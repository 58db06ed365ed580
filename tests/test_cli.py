"The `fasterbn` command's error paths: one line on stderr, a non-zero status, never a traceback; and the fastai export round trip."
import contextlib, io, os, shutil, subprocess, sys
from pathlib import Path
import pytest, torch, torch.nn as nn
from fasterbn.cli import main, load_folded
from fasterbn.folder import randomize_bn

def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()

def assert_one_line_error(rc, err, expect):
    assert rc == 1, (rc, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith('fasterbn: error:'), err
    assert 'Traceback' not in err and expect in err, err

def small_net():
    return randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(8), nn.Linear(8, 4))).eval()

@pytest.fixture(scope='module')
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp('cli')
    torch.manual_seed(0)
    import torchvision
    torch.save(randomize_bn(torchvision.models.resnet18(weights=None)).state_dict(), d/'r18.pth')
    torch.save({'state_dict': {'module.' + k: v for k, v in small_net().state_dict().items()}}, d/'ckpt.pt')
    torch.save(small_net(), d/'whole.pt')
    (d/'notes.txt').write_text('not a model')
    torch.save({'a': 1, 'b': 'text'}, d/'dict.pt')
    return d

@pytest.mark.parametrize('argv, expect', [
    (['fold', 'resnet19', '-o', 'x.pt'], 'did you mean resnet18'),
    (['fold', 'no_such_model_xyz', '-o', 'x.pt'], 'unknown model'),
    (['fold', 'missing/model.pth', '-o', 'x.pt'], 'no such file'),
    (['fold', 'missing.pth', '--arch', 'resnet18', '-o', 'x.pt'], 'no such file'),
    (['fold', 'resnet18', '-o', 'x.pt', '--input-shape', '1,3'], 'does not run through resnet18'),
    (['fold', 'resnet18', '-o', 'x.pt', '--input-shape', '1,3,-4,4'], 'positive integers'),
    (['fold', 'resnet18', '-o', 'x.pt', '--input-shape', '1,8,32,32'], 'does not run through resnet18'),
    (['fold', 'timm:no_such_timm_model', '-o', 'x.pt'], 'unknown model'),
    (['fold', 'onnx:resnet18', '-o', 'x.pt'], 'unknown library'),
])
def test_bad_names_and_shapes(argv, expect): assert_one_line_error(*run(*argv)[::2], expect)

def test_bad_files(files, tmp_path):
    d = files
    assert_one_line_error(*run('fold', d/'r18.pth', '-o', tmp_path/'o.pt')[::2], 'pass --arch NAME')
    assert_one_line_error(*run('fold', d/'r18.pth', '--arch', 'resnet34', '-o', tmp_path/'o.pt')[::2], 'does not fit --arch resnet34')
    assert_one_line_error(*run('fold', d/'r18.pth', '--arch', 'resnet50', '-o', tmp_path/'o.pt')[::2], 'does not fit --arch resnet50')
    assert_one_line_error(*run('fold', d/'r18.pth', '--arch', 'resnet18', '-o', tmp_path/'no'/'o.pt', '--input-shape', '1,3,32,32')[::2], 'does not exist')
    assert_one_line_error(*run('fold', d/'notes.txt', '-o', tmp_path/'o.pt')[::2], 'cannot read')
    assert_one_line_error(*run('fold', d/'dict.pt', '--arch', 'resnet18', '-o', tmp_path/'o.pt')[::2], 'not a state_dict')
    assert_one_line_error(*run('fold', d, '-o', tmp_path/'o.pt')[::2], 'is a directory')
    assert not (tmp_path/'o.pt').exists()

def test_pickle_needs_trust(files, tmp_path):
    rc, out, err = run('fold', files/'whole.pt', '-o', tmp_path/'o.pt', '--input-shape', '2,3,8,8')
    assert_one_line_error(rc, err, '--trust-pickle')
    assert 'runs code' in err and not (tmp_path/'o.pt').exists()
    rc, out, err = run('fold', files/'whole.pt', '-o', tmp_path/'o.pt', '--input-shape', '2,3,8,8', '--trust-pickle', '--verify')
    assert rc == 0, err
    assert 'BN layers folded: 2, not folded: 0' in out and 'exact to float32 rounding' in out
    folded = torch.load(tmp_path/'o.pt', weights_only=False)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())

def test_state_dict_roundtrip(files, tmp_path):
    rc, out, err = run('fold', files/'r18.pth', '--arch', 'resnet18', '-o', tmp_path/'f.pt', '--input-shape', '1,3,32,32', '--verify')
    assert rc == 0, err
    model = load_folded(tmp_path/'f.pt')
    import torchvision
    orig = torchvision.models.resnet18(weights=None).eval()
    orig.load_state_dict(torch.load(files/'r18.pth', weights_only=True))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(): torch.testing.assert_close(model(x), orig(x), rtol=1e-4, atol=1e-4 * float(orig(x).abs().max()))

def test_forward_only(files, tmp_path):
    # a checkpoint dict with DataParallel's `module.` prefix needs an architecture name, which a Sequential lacks
    assert_one_line_error(*run('fold', files/'ckpt.pt', '--arch', 'resnet18', '-o', tmp_path/'o.pt')[::2], 'does not fit --arch resnet18')
    rc, out, err = run('fold', files/'whole.pt', '--trust-pickle', '--forward-only', '-o', tmp_path/'o.pt', '--input-shape', '2,3,8,8')
    assert rc == 0 and 'BN layers folded: 1, not folded: 1' in out, out + err

def test_usage_errors():
    assert run()[0] == 2
    assert run('fold', 'resnet18')[0] == 2              # -o is required
    assert run('frobnicate')[0] == 2
    rc, out, _ = run('--version')
    assert rc == 0 and out.startswith('fasterbn ')

def test_demo_and_bench_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, 'fasterbn.demo', None)    # makes `import fasterbn.demo` fail
    monkeypatch.setitem(sys.modules, 'fasterbn.bench', None)
    assert_one_line_error(*run('demo')[::2], 'demo is not available')
    assert_one_line_error(*run('bench', 'resnet18')[::2], 'benchmark is not available')

def test_unexpected_error_is_one_line(monkeypatch):
    import fasterbn.cli as cli
    def boom(*a, **k): raise RuntimeError('something deep inside\nsecond line')
    monkeypatch.setattr(cli, 'load_model', boom)
    assert_one_line_error(*run('fold', 'resnet18', '-o', 'x.pt')[::2], 'RuntimeError: something deep inside')

def test_console_script(tmp_path):
    exe = Path(sys.executable).parent/'fasterbn'
    if not exe.exists(): pytest.skip('the fasterbn console script is not installed (pip install -e .)')
    p = subprocess.run([str(exe), 'fold', 'resnet19', '-o', str(tmp_path/'x.pt')], capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and p.stdout == '' and p.stderr.count('\n') == 1 and 'Traceback' not in p.stderr, p.stderr

def test_fastai_export(tmp_path):
    pytest.importorskip('fastai')
    from fastai.data.core import Datasets
    from fastai.data.transforms import ItemGetter
    from fastai.learner import Learner, load_learner
    xs, ys = torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))
    dsets = Datasets(list(zip(xs, ys)), tfms=[[ItemGetter(0)], [ItemGetter(1)]], splits=[list(range(12)), list(range(12, 16))])
    learn = Learner(dsets.dataloaders(bs=4, device='cpu'), small_net(), loss_func=nn.CrossEntropyLoss())
    learn.export(tmp_path/'export.pkl')
    rc, out, err = run('fold', tmp_path/'export.pkl', '-o', tmp_path/'o.pkl', '--input-shape', '2,3,8,8')
    assert_one_line_error(rc, err, '--trust-pickle')
    rc, out, err = run('fold', tmp_path/'export.pkl', '-o', tmp_path/'o.pkl', '--input-shape', '2,3,8,8', '--trust-pickle', '--verify')
    assert rc == 0, err
    assert 'fastai Learner' in out and 'BN layers folded: 2, not folded: 0' in out
    folded = load_learner(tmp_path/'o.pkl', cpu=True)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.model.modules())
    with torch.no_grad(): torch.testing.assert_close(folded.model.eval()(xs), learn.model.eval()(xs), rtol=1e-4, atol=1e-5)
