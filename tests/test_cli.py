"The `fasterbn` command's error paths: one line on stderr, a non-zero status, never a traceback; and the fastai export round trip."
import contextlib, io, os, re, shutil, subprocess, sys
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
    rc, _, err = run('fold', d/'r18.pth', '--arch', 'resnet34', '-o', tmp_path/'o.pt')
    assert_one_line_error(rc, err, 'does not fit --arch resnet34')
    assert '0 unexpected' not in err and '()' not in err, err   # only what is wrong: resnet34 has more keys, none unexpected
    assert_one_line_error(*run('fold', d/'r18.pth', '--arch', 'resnet50', '-o', tmp_path/'o.pt')[::2], 'does not fit --arch resnet50')
    assert_one_line_error(*run('fold', d/'r18.pth', '--arch', 'resnet18', '-o', tmp_path/'no'/'o.pt', '--input-shape', '1,3,32,32')[::2], 'does not exist')
    assert_one_line_error(*run('fold', d/'notes.txt', '-o', tmp_path/'o.pt')[::2], 'cannot read')
    assert_one_line_error(*run('fold', d/'dict.pt', '--arch', 'resnet18', '-o', tmp_path/'o.pt')[::2], 'neither a state_dict')
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


# ---- what a file is, OUT before folding, no silent overwrite, atomic writes ----

def test_says_what_the_file_is(files, tmp_path):
    "Not every torch file is a state_dict: say what it holds, with or without --arch."
    torch.save(torch.randn(3, 4), tmp_path/'tensor.pt')
    torch.save([torch.randn(2)] * 3, tmp_path/'list.pt')
    for extra in ([], ['--arch', 'resnet18']):
        for name, expect in [('tensor.pt', 'a single tensor of shape (3, 4)'), ('list.pt', 'a list of 3 item(s)'), ('dict.pt', "keys 'a', 'b'")]:
            rc, _, err = run('fold', files/'dict.pt' if name == 'dict.pt' else tmp_path/name, *extra, '-o', tmp_path/'o.pt')
            assert_one_line_error(rc, err, expect)
            assert 'pass --arch' not in err and 'is a state_dict' not in err, err
    rc, _, err = run('fold', files/'r18.pth', '--arch', 'resnet18', '-o', tmp_path/'f.pt', '--input-shape', '1,3,32,32')
    assert rc == 0, err
    for extra in ([], ['--arch', 'resnet18']):   # a file fasterbn wrote
        rc, _, err = run('fold', tmp_path/'f.pt', *extra, '-o', tmp_path/'o.pt')
        assert_one_line_error(rc, err, 'fasterbn already folded (torchvision resnet18, 20 BatchNorms folded)')
        assert 'load_folded' in err and 'pass --arch' not in err

@pytest.fixture
def no_fold(monkeypatch):
    "Make folding fail loudly: the checks below must stop the command before it."
    import fasterbn.cli as cli
    def fold(*a, **k): raise AssertionError('BN_Folder.fold ran before the options were checked')
    monkeypatch.setattr(cli.BN_Folder, 'fold', fold)

def _unwritable_dir(tmp_path):
    if os.geteuid() != 0:
        d = tmp_path/'ro'; d.mkdir(); d.chmod(0o500); return d
    if Path('/sys').is_dir(): return Path('/sys')   # root writes anywhere, except on sysfs
    pytest.skip('no unwritable folder to test with')

@pytest.mark.parametrize('out, expect', [
    ('', '-o is empty'), ('  ', '-o is empty'),
    ('{tmp}', 'is a directory'), ('{tmp}/newdir/', 'is a directory'),
    ('{tmp}/missing/o.pt', 'does not exist'), ('{tmp}/notes.txt/o.pt', 'is not a directory'),
    ('{ro}/o.pt', 'cannot create a file in'),
])
def test_out_checked_before_folding(files, tmp_path, no_fold, out, expect):
    (tmp_path/'notes.txt').write_text('a file')
    out = out.format(tmp=tmp_path, ro=_unwritable_dir(tmp_path) if '{ro}' in out else '')
    assert_one_line_error(*run('fold', files/'r18.pth', '--arch', 'resnet18', '-o', out, '--input-shape', '1,3,32,32')[::2], expect)

def test_options_checked_before_folding(files, tmp_path, no_fold):
    assert_one_line_error(*run('fold', 'resnet18', '-o', tmp_path/'o.pt', '--bench', '--repeats', '0')[::2], '--repeats must be at least 1')
    assert_one_line_error(*run('fold', 'resnet18', '-o', tmp_path/'o.pt', '--repeats', '-2')[::2], '--repeats must be at least 1')

def test_out_is_model_needs_force(files, tmp_path):
    "`fasterbn fold r18.pt --arch resnet18 -o r18.pt` keeps the user's weights unless --force says to replace them."
    src = tmp_path/'r18.pth'
    shutil.copy(files/'r18.pth', src)
    before = src.read_bytes()
    (tmp_path/'link.pth').symlink_to(src)
    for out in (src, f'{tmp_path}/./r18.pth', tmp_path/'link.pth'):
        assert_one_line_error(*run('fold', src, '--arch', 'resnet18', '-o', out, '--input-shape', '1,3,32,32')[::2], '--force')
    assert src.read_bytes() == before
    rc, out, err = run('fold', src, '--arch', 'resnet18', '-o', src, '--input-shape', '1,3,32,32', '--force')
    assert rc == 0, err
    assert load_folded(src) is not None and src.read_bytes() != before

def test_failed_write_leaves_out_as_it_was(files, tmp_path, monkeypatch):
    "A write that fails half-way (here: a full disk) leaves OUT's old content and no temporary file."
    import errno
    out = tmp_path/'o.pt'
    out.write_bytes(b'the previous file')
    def full_disk(obj, f, *a, **k):
        with open(f, 'wb') as fh: fh.write(b'PK\x03\x04 half a file')
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(torch, 'save', full_disk)
    rc, _, err = run('fold', files/'r18.pth', '--arch', 'resnet18', '-o', out, '--input-shape', '1,3,32,32')
    assert_one_line_error(rc, err, 'No space left on device')
    assert out.read_bytes() == b'the previous file'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['o.pt'], list(tmp_path.iterdir())
    rc, _, err = run('fold', files/'r18.pth', '--arch', 'resnet18', '-o', tmp_path/'new.pt', '--input-shape', '1,3,32,32')
    assert_one_line_error(rc, err, 'nothing was written')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['o.pt']

def test_written_file_has_usual_permissions(files, tmp_path):
    out = tmp_path/'o.pt'
    rc, _, err = run('fold', files/'r18.pth', '--arch', 'resnet18', '-o', out, '--input-shape', '1,3,32,32')
    assert rc == 0, err
    umask = os.umask(0); os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask

# ---- where `fasterbn bench` writes ----

def _fake_rows():
    base = dict(bn_total=2, not_folded=0, rel_err=1e-7, error=None, ratio_b1=1.0)
    return [dict(base, model='m', tool='unfolded fp32', folded=0, not_folded=2, fold_s=.01, fold_x=None),
            dict(base, model='m', tool='fasterbn', folded=2, fold_s=.02, fold_x=2.0, ratio_b1=.9, fold_vs_fuse=1.5),
            dict(base, model='m', tool='torch.fx fuse', folded=2, fold_s=.015, fold_x=1.5, ratio_b1=.9)]

@pytest.fixture
def fake_bench(monkeypatch):
    import fasterbn.bench as bench
    calls = []
    def run_bench(*a, **k): calls.append((a, k)); return _fake_rows()
    monkeypatch.setattr(bench, 'run_bench', run_bench)
    return calls

def test_bench_writes_where_asked(tmp_path, monkeypatch, fake_bench):
    "`fasterbn bench` writes into ./fasterbn-bench (or --out-dir), never into a project's bench/ or nbs/ folders."
    monkeypatch.chdir(tmp_path)
    rc, out, err = run('bench')
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['fasterbn-bench']
    assert '| m | fasterbn | 2/2 |' in out and 'fasterbn ÷ fx fuse' in out
    assert sorted(p.name for p in (tmp_path/'fasterbn-bench').iterdir()) == ['benchmark.png', 'results.md']
    rc, out, err = run('bench', '--quiet', '--out-dir', 'elsewhere/deeper')
    assert rc == 0 and (tmp_path/'elsewhere'/'deeper'/'results.md').exists(), err
    assert '![benchmark](benchmark.png)' in (tmp_path/'elsewhere'/'deeper'/'results.md').read_text()
    rc, out, err = run('bench', '--quiet', '--no-write', '--out-dir', 'not_written')
    assert rc == 0 and not (tmp_path/'not_written').exists()

def test_bench_checks_targets_before_running(tmp_path, monkeypatch, fake_bench):
    monkeypatch.chdir(tmp_path)
    (tmp_path/'afile').write_text('x')
    for argv, expect in [(['--out-dir', 'afile'], 'afile is not a directory'), (['--out', str(tmp_path)], 'is a directory'),
                         (['--plot', 'afile/deeper/p.png'], 'is not a directory')]:
        rc, out, err = run('bench', '--quiet', *argv)
        assert rc == 1 and err.startswith('fasterbn bench: error:') and len(err.strip().splitlines()) == 1 and expect in err, err
    for argv in (['--repeats', '0'], ['--fold-repeats', '-1'], ['--batch-sizes', '1,0']):
        assert run('bench', '--quiet', *argv)[0] == 2   # argparse's usage error
    assert fake_bench == [], 'the benchmark ran before its targets were checked'

def test_project_benchmark_script(tmp_path, fake_bench):
    "tools/benchmark.py: a full run refreshes the project's results, found from the project root, whatever the current folder; a partial run writes nothing."
    from fasterbn.bench import bench_main
    import contextlib, io
    with contextlib.redirect_stdout(io.StringIO()):
        assert bench_main(['--quiet', '--quick'], project=tmp_path) == 0
        assert list(tmp_path.iterdir()) == []
        assert bench_main(['--quiet'], project=tmp_path) == 0
    assert (tmp_path/'bench'/'results.md').exists() and (tmp_path/'nbs'/'images'/'benchmark.png').exists()
    assert '](../nbs/images/benchmark.png)' in (tmp_path/'bench'/'results.md').read_text()

def test_folded_file_keeps_identity_branches_and_merged_batchnorms(tmp_path):
    "A RepVGG (identity branches leave zeros) round-trips through the folded file, and loads to the same function."
    pytest.importorskip('timm')
    rc, out, err = run('fold', 'timm:repvgg_a0', '-o', tmp_path/'r.pt', '--input-shape', '1,3,64,64', '--verify')
    assert rc == 0, err
    assert 'not folded: 0' in out and 'branch' in out
    model = load_folded(tmp_path/'r.pt')
    from fasterbn.cli import build_arch
    torch.manual_seed(0); orig = build_arch('timm:repvgg_a0')[0]   # as the CLI builds it (--seed 0)
    randomize_bn(orig, seed=0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(): torch.testing.assert_close(model(x), orig.eval()(x), rtol=1e-4, atol=1e-4 * float(orig(x).abs().max()))


# ---- pretrained weights from the usual caches (nothing is downloaded: each test puts a checkpoint where the cache is) ----

def _no_download(url, *a, **k): raise RuntimeError(f'download of {url} blocked: the tests read caches only')

@pytest.fixture
def torch_hub(tmp_path, monkeypatch):
    "A torch hub cache in a temporary TORCH_HOME, holding 'ResNet18_Weights.IMAGENET1K_V1' (random weights standing for the real ones)."
    import torchvision
    w = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    ckpt = tmp_path/'torch_home'/'hub'/'checkpoints'/Path(w.url).name   # where torch.hub looks for it
    ckpt.parent.mkdir(parents=True)
    trained = randomize_bn(torchvision.models.resnet18(weights=None), seed=3).eval()
    torch.save(trained.state_dict(), ckpt)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path/'torch_home'))
    monkeypatch.setattr(torch.hub, 'download_url_to_file', _no_download)
    return trained

def test_torchvision_weights_by_name(torch_hub, tmp_path):
    "`fasterbn fold resnet18 --weights IMAGENET1K_V1` folds the cached weights (their own BatchNorm statistics, not random ones)."
    rc, out, err = run('fold', 'resnet18', '--weights', 'IMAGENET1K_V1', '-o', tmp_path/'f.pt', '--input-shape', '1,3,32,32', '--verify')
    assert rc == 0, err
    assert 'torchvision resnet18, pretrained weights ResNet18_Weights.IMAGENET1K_V1' in out and 'randomized' not in out
    assert torch.load(tmp_path/'f.pt', weights_only=True)['weights'] == 'ResNet18_Weights.IMAGENET1K_V1'
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(): torch.testing.assert_close(load_folded(tmp_path/'f.pt')(x), torch_hub(x), rtol=1e-4, atol=1e-4)
    rc, out, err = run('fold', 'resnet18', '--weights', 'ResNet18_Weights.DEFAULT', '-o', tmp_path/'g.pt', '--input-shape', '1,3,32,32')
    assert rc == 0, err   # the enum's full name, and DEFAULT (the same file)

def test_weights_not_cached_nor_downloadable(torch_hub, tmp_path):
    "Weights that are not in the cache are downloaded; when that fails, one line says where the cache is."
    rc, out, err = run('fold', 'mobilenet_v2', '--weights', 'IMAGENET1K_V1', '-o', tmp_path/'m.pt', '--input-shape', '1,3,32,32')
    assert_one_line_error(rc, err, 'cannot get the MobileNet_V2_Weights.IMAGENET1K_V1 weights of mobilenet_v2')
    assert str(tmp_path/'torch_home'/'hub'/'checkpoints') in err and 'download of' in err
    assert not (tmp_path/'m.pt').exists()

@pytest.mark.parametrize('argv, expect', [
    (['fold', 'resnet18', '--weights', 'IMAGENET'], 'torchvision has no such weights for resnet18; it has IMAGENET1K_V1, DEFAULT'),
    (['fold', 'efficientnet_b0.no_such_tag'], 'timm has no pretrained weights efficientnet_b0.no_such_tag; it has '),
    (['fold', 'efficientnet_b0.ra_in1k', '--weights', 'ra4_e3600_r224_in1k'], 'names other weights than'),
])
def test_unknown_weights(argv, expect, tmp_path, monkeypatch):
    if 'efficientnet' in argv[1]: pytest.importorskip('timm')
    monkeypatch.setattr(torch.hub, 'download_url_to_file', _no_download)
    assert_one_line_error(*run(*argv, '-o', tmp_path/'o.pt')[::2], expect)

def test_weights_go_with_a_name(files, tmp_path):
    assert_one_line_error(*run('fold', files/'r18.pth', '--arch', 'resnet18', '--weights', 'DEFAULT', '-o', tmp_path/'o.pt')[::2],
                          '--weights goes with an architecture name')

_TIMM_FOLD = """
import sys
from fasterbn.cli import main
raise SystemExit(main(sys.argv[1:]))
"""

def _hf_cache(home: Path, model_id: str, state: dict):
    "A Hugging Face hub cache under `home` (HF_HOME) holding `model_id`'s model.safetensors, as `hf_hub_download` leaves it."
    import safetensors.torch
    repo = home/'hub'/f'models--{model_id.replace("/", "--")}'
    snap = repo/'snapshots'/('0' * 40)
    snap.mkdir(parents=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(snap/'model.safetensors'))
    (repo/'refs').mkdir()
    (repo/'refs'/'main').write_text('0' * 40)

def test_timm_pretrained_tag_from_the_hf_cache(tmp_path):
    "`fasterbn fold efficientnet_b0.ra_in1k` loads timm's pretrained weights from the Hugging Face cache (HF_HUB_OFFLINE=1: no request)."
    timm = pytest.importorskip('timm')
    pytest.importorskip('safetensors')
    trained = randomize_bn(timm.create_model('efficientnet_b0.ra_in1k', pretrained=False), seed=4).eval()
    _hf_cache(tmp_path/'hf', 'timm/efficientnet_b0.ra_in1k', trained.state_dict())
    env = dict(os.environ, HF_HOME=str(tmp_path/'hf'), HF_HUB_OFFLINE='1', PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    def fold(*argv):
        return subprocess.run([sys.executable, '-c', _TIMM_FOLD, 'fold', *map(str, argv), '--input-shape', '1,3,64,64'],
                              capture_output=True, text=True, env=env, timeout=600)
    p = fold('efficientnet_b0.ra_in1k', '-o', tmp_path/'e.pt', '--verify')
    assert p.returncode == 0, p.stderr
    assert 'timm efficientnet_b0.ra_in1k, pretrained weights' in p.stdout and 'OK, exact to float32 rounding' in p.stdout
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(): torch.testing.assert_close(load_folded(tmp_path/'e.pt')(x), trained(x), rtol=1e-4, atol=1e-4 * float(trained(x).abs().max()))
    p = fold('efficientnet_b0.ra4_e3600_r224_in1k', '-o', tmp_path/'f.pt')   # a tag that is not in the cache
    assert p.returncode == 1 and p.stderr.count('\n') == 1, p.stderr
    assert 'cannot get the pretrained weights of efficientnet_b0.ra4_e3600_r224_in1k from the Hugging Face cache or hub (HF_HUB_OFFLINE=1)' in p.stderr

# ---- what `--bench` prints, what `bench` and `demo` need ----

def test_bench_line_says_what_it_measured(tmp_path):
    rc, out, err = run('fold', 'resnet18', '-o', tmp_path/'o.pt', '--input-shape', '1,3,32,32', '--bench', '--repeats', '3')
    assert rc == 0, err
    line = next(l for l in out.splitlines() if l.startswith('latency'))
    assert 'median original' in line and 'median folded' in line and 'median of the 3 paired ratios folded/original' in line, line

def test_latency_line_never_contradicts_itself():
    from fasterbn.cli import latency_line
    quiet = latency_line({'original': [.050, .049, .051], 'folded': [.046, .045, .047]}, (1, 3, 8, 8))
    assert '(folded/original 0.92)' in quiet and 'paired ratios folded/original 0.92' in quiet and 'disagree' not in quiet
    busy = latency_line({'original': [.050, .080, .051], 'folded': [.046, .075, .079]}, (1, 3, 8, 8))
    assert '(folded/original 1.47)' in busy and 'paired ratios folded/original 0.94' in busy and 'The two ratios disagree' in busy

@pytest.mark.parametrize('argv, needs', [
    (['--quick'], ['torchvision', 'matplotlib']), (['--fold-only', '--no-write'], ['torchvision']),
    ([], ['torchvision', 'matplotlib', 'fastai']), (['resnet18', 'fastai_tabular'], ['torchvision', 'matplotlib', 'fastai']),
    (['--repeats', '3', 'resnet18'], ['torchvision', 'matplotlib']), (['--help'], []),
])
def test_bench_needs(argv, needs):
    from fasterbn.cli import bench_needs
    assert bench_needs(argv) == needs

def test_bench_extra_carries_what_bench_needs():
    import tomllib
    extras = tomllib.loads((Path(__file__).resolve().parents[1]/'pyproject.toml').read_text())['project']['optional-dependencies']
    names = {re.split(r'[<>=\[ ;]', r)[0] for r in extras['bench']}
    assert {'torchvision', 'matplotlib', 'fastai'} <= names, names
    assert {'fastai'} <= {re.split(r'[<>=\[ ;]', r)[0] for r in extras['fastai']}   # `fasterbn demo`: fastai brings scikit-learn, matplotlib

def _without(monkeypatch, *modules):
    "Make `importlib.util.find_spec` say that `modules` are not installed."
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a, **k: None if name in modules else real(name, *a, **k))

def test_bench_stops_before_starting_when_a_package_is_missing(monkeypatch):
    _without(monkeypatch, 'matplotlib')
    monkeypatch.setitem(sys.modules, 'fasterbn.bench', None)   # had the command started the benchmark, the error would differ
    rc, out, err = run('bench', '--quick')
    assert_one_line_error(rc, err, 'fasterbn bench needs matplotlib, which is not installed here: pip install "fasterbn[bench]"')

def test_demo_without_fastai_names_the_extra(monkeypatch):
    _without(monkeypatch, 'fastai', 'sklearn')
    rc, out, err = run('demo')
    assert_one_line_error(rc, err, 'fasterbn demo needs fastai and scikit-learn, which are not installed here: pip install "fasterbn[fastai]"')

def test_demo_help_says_what_it_does():
    rc, out, err = run('demo', '--help')
    assert rc == 0
    text = ' '.join(out.split())
    for words in ('digits', 'BNFoldCallback', 'accuracy, loss, parameters and latency', 'pip install "fasterbn[fastai]"', '--epochs', '--out-dir'):
        assert words in text, words
