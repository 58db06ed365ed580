"Edge cases of `BNFoldCallback` and `Learner.fold_bn` that the tutorial notebook does not show."
import copy, warnings, pytest
import torch, torch.nn as nn
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.callback.core import Callback
import fastai.callback.progress
from fasterbn.callback import BNFoldCallback, example_batch

torch.set_num_threads(1)

def _dls(valid=True):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 3, 8, 8, generator=g)
    ds = list(zip(x, (x[:, 0].mean((1, 2)) > 0).long()))
    return DataLoaders(DataLoader(ds[:64], bs=16, shuffle=True), DataLoader(ds[64:] if valid else [], bs=16))

def _model(bn=True):
    torch.manual_seed(0)
    norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), norm(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 2))

def _fit(learn, n=1):
    with learn.no_bar(), learn.no_logging(): learn.fit(n, 1e-2)
    return learn

def test_validate_inside_fit_does_not_fold():
    "A `validate` run by another callback during training must neither fold nor stop the fold at the end."
    seen = []
    class ValidateEachEpoch(Callback):
        def after_train(self):   # not after_epoch: validate's own after_epoch would call it again
            with self.learn.no_bar(): self.learn.validate()
            seen.append(type(self.learn.model[1]).__name__)
    learn = _fit(Learner(_dls(), _model(), loss_func=nn.CrossEntropyLoss(), cbs=[ValidateEachEpoch(), BNFoldCallback()]), 2)
    assert seen == ['BatchNorm2d', 'BatchNorm2d']
    assert type(learn.model[1]) is nn.Identity and learn.fold_report.n_folded == 1

def test_example_batch_falls_back_to_train():
    learn = Learner(_dls(valid=False), _model(), loss_func=nn.CrossEntropyLoss())
    xb, = example_batch(learn)
    assert xb.shape == (2, 3, 8, 8) and type(xb) is torch.Tensor

def test_example_batch_train_only_dataloaders():
    learn = Learner(DataLoaders(_dls().train), _model(), loss_func=nn.CrossEntropyLoss())
    assert example_batch(learn)[0].shape == (2, 3, 8, 8)

def test_example_batch_casts_to_model_dtype():
    learn = Learner(_dls(), _model().double(), loss_func=nn.CrossEntropyLoss())
    assert example_batch(learn, n=5)[0].dtype == torch.float64 and len(example_batch(learn, n=5)[0]) == 5

def test_no_data_folds_without_shapes():
    "With no batch to trace shapes on (an exported learner's empty `dls`), `fold_bn` still folds what needs no shapes."
    learn = Learner(_dls(), _model(), loss_func=nn.CrossEntropyLoss())
    learn.dls = DataLoaders(DataLoader([], bs=16), DataLoader([], bs=16))
    assert example_batch(learn) is None
    assert learn.fold_bn().n_folded == 1

def test_model_without_batchnorm_keeps_optimizer():
    learn = _fit(Learner(_dls(), _model(bn=False), loss_func=nn.CrossEntropyLoss(), cbs=BNFoldCallback()))
    assert learn.opt is not None and getattr(learn, 'fold_report', None) is None

def test_refit_after_fold_warns_and_keeps_report():
    learn = _fit(Learner(_dls(), _model(), loss_func=nn.CrossEntropyLoss(), cbs=BNFoldCallback()))
    report = learn.fold_report
    with pytest.warns(UserWarning, match='no BatchNorm is left'): _fit(learn)
    assert learn.fold_report is report   # nothing left to fold: the report of the real fold stays
    assert learn.opt is not None         # and the fresh optimizer the second fit built is kept

def test_replaced_model_does_not_warn():
    "Only a model this learner folded triggers the warning: a new model with BatchNorm trains silently, and is folded."
    learn = _fit(Learner(_dls(), _model(), loss_func=nn.CrossEntropyLoss(), cbs=BNFoldCallback()))
    learn.model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        _fit(learn)
    assert type(learn.model[1]) is nn.Identity

def test_verbose_prints_report(capsys):
    _fit(Learner(_dls(), _model(), loss_func=nn.CrossEntropyLoss(), cbs=BNFoldCallback(verbose=True)))
    assert 'BN layers folded: 1' in capsys.readouterr().out

def test_fine_tune_folds_once_at_the_end():
    "`fine_tune` fits twice; the callback folds only after the second fit, and again for the next `fine_tune` call."
    import fastai.callback.schedule
    states = []
    class Spy(Callback):
        order = BNFoldCallback.order + 1
        def after_fit(self): states.append(type(self.learn.model[1]).__name__)
    learn = Learner(_dls(), _model(), loss_func=nn.CrossEntropyLoss(), cbs=[BNFoldCallback(), Spy()])
    with learn.no_bar(), learn.no_logging(): learn.fine_tune(1, 1e-2, freeze_epochs=1)
    assert states == ['BatchNorm2d', 'Identity']
    learn.model = _model()
    with learn.no_bar(), learn.no_logging(): learn.fine_tune(1, 1e-2)
    assert states[2:] == ['BatchNorm2d', 'Identity']

# ---- checkpoints written before the fold, the fastai import warning, a tabular model ----

def test_load_checkpoint_of_the_unfolded_model(tmp_path):
    "`learn.load` of the checkpoint `SaveModelCallback` wrote during the same fit: loaded into the unfolded layers, folded again."
    from fastai.callback.tracker import SaveModelCallback
    learn = _fit(Learner(_dls(), _model(), loss_func=nn.CrossEntropyLoss(), path=tmp_path,
                         cbs=[SaveModelCallback(fname='best'), BNFoldCallback()]), 2)
    xb = _dls().valid.one_batch()[0]
    with torch.no_grad(): before = learn.model.eval()(xb)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')   # fastai: "Saved file doesn't contain an optimizer state"
        learn.load('best')
    assert type(learn.model[1]) is nn.Identity and learn.fold_report.n_folded == 1 and learn.opt is None
    with torch.no_grad(): torch.testing.assert_close(learn.model.eval()(xb), before, rtol=1e-5, atol=1e-6)
    learn.save('folded')                   # a checkpoint of the folded model loads as usual
    learn.load('folded', with_opt=False)
    with torch.no_grad(): torch.testing.assert_close(learn.model.eval()(xb), before, rtol=1e-5, atol=1e-6)

def test_load_unrelated_checkpoint_says_the_model_was_folded(tmp_path):
    "A checkpoint that is neither the folded nor the unfolded model: a clear error, and the folded model is left as it was."
    learn = _fit(Learner(_dls(), _model(), loss_func=nn.CrossEntropyLoss(), path=tmp_path, cbs=BNFoldCallback()))
    other = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 2), nn.BatchNorm1d(2))
    (tmp_path/'models').mkdir()
    torch.save(other.state_dict(), tmp_path/'models'/'other.pth')
    state = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with pytest.raises(RuntimeError, match='fasterbn folded 1 BatchNorm') as e: learn.load('other', with_opt=False)
    assert len(str(e.value).splitlines()) == 1 and '0 missing' not in str(e.value)
    assert all(torch.equal(v, learn.model.state_dict()[k]) for k, v in state.items()), 'a failed load changed the folded weights'

def test_import_shows_no_fastai_warning():
    "fastai's `torch.jit.script` deprecation warning is not shown on import, and the user's warning filters are untouched."
    import subprocess, sys
    code = ('import warnings; warnings.filterwarnings("error", message="mine"); before = list(warnings.filters); import fasterbn.callback; '
            'assert before[0] in warnings.filters, "the user\'s filter is gone"; '
            'assert not any(f[1] and "jit.script" in f[1].pattern for f in warnings.filters), "a filter of ours stayed"; '
            'warnings.warn("the user\'s own", FutureWarning)')
    p = subprocess.run([sys.executable, '-W', 'default', '-c', code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert 'torch.jit.script' not in p.stderr, p.stderr
    assert "the user's own" in p.stderr   # warnings that are the user's still show

def test_tabular_one_continuous_column():
    "`tabular_learner` with one continuous column: its `BatchNorm1d(1)` goes through a `cat` into the first Linear, at the right offset."
    import copy, numpy as np, pandas as pd
    from fastai.tabular.all import TabularPandas, Categorify, tabular_learner, RandomSplitter, CategoryBlock, range_of
    rng = np.random.default_rng(0)
    df = pd.DataFrame({'a': rng.choice(list('xyz'), 200), 'b': rng.choice(list('pq'), 200), 'c': rng.normal(3, 2, 200)})
    df['y'] = ((df.c > 3) ^ (df.a == 'x')).astype(int)
    # no `Normalize`: `bn_cont` then learns mean ~3, variance ~4, far from the identity, so a fold at the wrong offset shows
    to = TabularPandas(df, procs=[Categorify], cat_names=['a', 'b'], cont_names=['c'], y_names='y',
                       y_block=CategoryBlock(), splits=RandomSplitter(seed=0)(range_of(df)))
    dls = to.dataloaders(bs=32)
    snapshot = {}
    class Snapshot(Callback):
        order = BNFoldCallback.order - 1   # just before the fold
        def after_fit(self): snapshot.setdefault('model', copy.deepcopy(self.learn.model))   # get_preds calls after_fit too
    torch.manual_seed(0)
    learn = tabular_learner(dls, layers=[8, 4], cbs=[BNFoldCallback(), Snapshot()])
    _fit(learn, 2)
    assert learn.fold_report.n_folded == 3, learn.fold_report
    with learn.no_bar(): after = learn.get_preds()[0]
    learn.model = snapshot['model']
    with learn.no_bar(): before = learn.get_preds()[0]
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)

# ---- what the callback says, the report over several folds, `fine_tune` and `load` without stack walking or instance patches ----

def test_one_line_summary(capsys):
    "After a fit that folds, one line through `learn.logger` says what was folded; `quiet=True` and `no_logging()` silence it."
    learn = Learner(_dls(), _model(), loss_func=nn.CrossEntropyLoss(), cbs=BNFoldCallback())
    with learn.no_bar(): learn.fit(1, 1e-2)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == 'BNFoldCallback: folded 1 of 1 BatchNorm layer into their neighbours; learn.fold_report has the details', lines
    assert sum('BNFoldCallback' in l for l in lines) == 1
    learn = _fit(Learner(_dls(), _model(), loss_func=nn.CrossEntropyLoss(), cbs=BNFoldCallback()))   # inside no_logging
    assert 'BNFoldCallback' not in capsys.readouterr().out and learn.fold_report.n_folded == 1
    learn = Learner(_dls(), _model(), loss_func=nn.CrossEntropyLoss(), cbs=BNFoldCallback(quiet=True))
    with learn.no_bar(): learn.fit(1, 1e-2)
    assert 'BNFoldCallback' not in capsys.readouterr().out and learn.fold_report.n_folded == 1

def test_summary_says_how_many_stay(capsys):
    "A BatchNorm that cannot be folded (between two ReLUs): the line says how many stay."
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 2))
    learn = Learner(_dls(), model, loss_func=nn.CrossEntropyLoss(), cbs=BNFoldCallback())
    with learn.no_bar(): learn.fit(1, 1e-2)
    report = learn.fold_report
    assert report.n_not_folded >= 1
    assert capsys.readouterr().out.splitlines()[-1] == (f'BNFoldCallback: folded {report.n_folded} of {len(report)} BatchNorm layers into their '
                                                         f'neighbours; learn.fold_report says why {report.n_not_folded} stays')

def test_second_fold_keeps_the_first_in_the_report():
    "The callback folds; a later `fold_bn()` finds nothing left, and the report it returns still shows what was folded."
    learn = _fit(Learner(_dls(), _model(), loss_func=nn.CrossEntropyLoss(), cbs=BNFoldCallback()))
    report = learn.fold_bn()
    assert report is learn.fold_report
    assert (report.n_folded, report.n_not_folded, report['1'].into) == (1, 0, '0')
    assert report.notes[-1].startswith('2 folds of this model')

def test_report_over_two_folds_of_one_model():
    "Forward-only first, then forward and backward: the report has each BatchNorm once, from the fold that folded it."
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 1), nn.Flatten(), nn.Linear(8 * 36, 2))
    learn = Learner(_dls(), model, loss_func=nn.CrossEntropyLoss())
    first = learn.fold_bn(backward=False)
    assert (first.n_folded, first.n_not_folded) == (1, 1)
    both = learn.fold_bn(backward=True)
    assert [(r.bn, r.folded, r.direction) for r in both.rows] == [('1', True, 'forward'), ('3', True, 'backward')]

def test_replaced_model_starts_a_new_report():
    learn = _fit(Learner(_dls(), _model(), loss_func=nn.CrossEntropyLoss(), cbs=BNFoldCallback()))
    learn.model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2))
    report = learn.fold_bn()
    assert report.n_folded == 1 and not report.notes

def test_no_stack_walking_no_instance_patching(tmp_path):
    "The callback finds `fine_tune` and reloads checkpoints with class-level `@patch`es only (issue 15)."
    import inspect, fasterbn.callback
    from fastai.torch_core import get_model
    src = inspect.getsource(fasterbn.callback)
    assert '_getframe' not in src and 'f_back' not in src
    learn = _fit(Learner(_dls(), _model(), loss_func=nn.CrossEntropyLoss(), path=tmp_path, cbs=BNFoldCallback()))
    learn.save('folded', with_opt=False)
    learn.load('folded', with_opt=False)
    assert 'load_state_dict' not in vars(get_model(learn.model))

def _branch():
    class Branch(nn.Module):
        def __init__(self): super().__init__(); self.conv, self.bn = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        def forward(self, x): return self.conv(x) + self.bn(x)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), Branch(), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 2))

KINDS = {   # one model per kind of fold; what the report must say
    'forward': (lambda: nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 2)),
                {'1': 'forward'}),
    'backward': (lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 1, bias=False), nn.ReLU(),
                                       nn.Flatten(), nn.Linear(8 * 36, 2)), {'2': 'backward'}),
    'branch': (_branch, {'2.bn': 'branch'}),
    'merge': (lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.BatchNorm2d(8, affine=False), nn.BatchNorm2d(8), nn.ReLU(),   # issue 14, defect 6
                                    nn.Flatten(), nn.Linear(8 * 36, 2)), {'3': 'forward'}),
}

@pytest.mark.parametrize('kind', list(KINDS))
@pytest.mark.parametrize('with_opt', [False, True])
def test_load_pre_fold_checkpoint_after_each_kind_of_fold(kind, with_opt, tmp_path):
    """`learn.load` of a checkpoint saved before the fold, after a forward, backward, identity-branch or BatchNorm -> BatchNorm fold:
    loaded into the unfolded model and folded again, so the model computes what folding that checkpoint gives."""
    from fastai.callback.tracker import SaveModelCallback
    make, expect = KINDS[kind]
    torch.manual_seed(0)
    learn = Learner(_dls(), make(), loss_func=nn.CrossEntropyLoss(), path=tmp_path, cbs=[SaveModelCallback(fname='best', with_opt=with_opt), BNFoldCallback()])
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-2)
    assert {r.bn: r.direction for r in learn.fold_report.folded} == expect, learn.fold_report
    xb = _dls().valid.one_batch()[0]
    reference, state = make(), torch.load(tmp_path/'models'/'best.pth', weights_only=False)   # our own file
    reference.load_state_dict(state['model'] if with_opt else state)   # the unfolded model computes what its fold does
    reference.eval()
    with torch.no_grad(): want = reference(xb)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')   # fastai: "Saved file doesn't contain an optimizer state"
        learn.load('best', with_opt=with_opt)
    assert {r.bn: r.direction for r in learn.fold_report.folded} == expect
    assert not learn.fold_report.notes or not learn.fold_report.notes[-1].startswith('2 folds'), 'the reload is one fresh fold'
    with torch.no_grad(): torch.testing.assert_close(learn.model.eval()(xb), want, rtol=1e-4, atol=1e-5)
    learn.load('best', with_opt=False)   # and again: the kept copies serve every load
    with torch.no_grad(): torch.testing.assert_close(learn.model.eval()(xb), want, rtol=1e-4, atol=1e-5)

def test_load_pre_fold_checkpoint_after_two_folds(tmp_path):
    "Two folds of one model (forward only, then backward): a checkpoint from before both loads, and is folded both ways."
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 1), nn.Flatten(), nn.Linear(8 * 36, 2))
    learn = _fit(Learner(_dls(), model, loss_func=nn.CrossEntropyLoss(), path=tmp_path))
    learn.save('before', with_opt=False)
    unfolded = copy.deepcopy(learn.model).eval()
    learn.fold_bn(backward=False); learn.fold_bn(backward=True)
    learn.load('before', with_opt=False)
    assert learn.fold_report.n_folded == 2 and not any(isinstance(m, nn.BatchNorm2d) for m in learn.model.modules())
    xb = _dls().valid.one_batch()[0]
    with torch.no_grad(): torch.testing.assert_close(learn.model.eval()(xb), unfolded(xb), rtol=1e-4, atol=1e-5)

def test_readme_fastai_example_line(capsys):
    "The README's fastai example: a `vision_learner` on resnet18 folds all 22 BatchNorms, and prints the line the README shows."
    import re
    from pathlib import Path
    from fastai.vision.learner import vision_learner
    from torchvision.models import resnet18
    import fastai.callback.schedule
    readme = (Path(__file__).resolve().parents[1]/'README.md').read_text()
    shown = re.search(r'^(BNFoldCallback: folded .*)$', readme, re.M).group(1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 64, 64, generator=g), torch.randint(0, 2, (32,), generator=g)
    dls = DataLoaders(DataLoader(list(zip(x[:24], y[:24])), bs=8, shuffle=True), DataLoader(list(zip(x[24:], y[24:])), bs=8))
    learn = vision_learner(dls, resnet18, n_out=2, pretrained=False, normalize=False, loss_func=nn.CrossEntropyLoss())
    with learn.no_bar(): learn.fit_one_cycle(1, 1e-3, cbs=BNFoldCallback())
    assert capsys.readouterr().out.splitlines()[-1] == shown
