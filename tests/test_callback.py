"Edge cases of `BNFoldCallback` and `Learner.fold_bn` that the tutorial notebook does not show."
import warnings, pytest
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
