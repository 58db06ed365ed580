"Shared checks: a fold must be exact against a float64 reference and leave the original untouched."
import copy, warnings
import pytest, torch
from fasterbn.folder import BN_Folder, randomize_bn, fold_error

warnings.filterwarnings('ignore', category=FutureWarning)

def snapshot(model):
    "Everything a fold could change: tensors (values, dtype, strides) and module classes."
    return ({k: (v.detach().clone(), v.stride()) for k, v in model.state_dict(keep_vars=True).items()},
            [(n, type(m)) for n, m in model.named_modules()], {n: m.training for n, m in model.named_modules()})

def assert_same(model, snap):
    tensors, types, modes = snapshot(model)
    assert types == snap[1], 'module tree changed'
    assert tensors.keys() == snap[0].keys(), 'state_dict keys changed'
    for k, (v, stride) in snap[0].items():
        assert torch.equal(tensors[k][0], v) and tensors[k][1] == stride and tensors[k][0].dtype == v.dtype, f'{k} changed'

def fold_and_check(model, *inputs, example=True, factor=10, seed=0, randomize=True, **kw):
    "Fold a copy of `model` (with randomized BN state); assert exactness vs float64 and an untouched original. Returns (folded, report)."
    if randomize: randomize_bn(model, seed)
    model.eval()
    snap = snapshot(model)
    folder = BN_Folder(**kw)
    folded = folder.fold(model, example_inputs=inputs if example else None)
    assert_same(model, snap)
    assert type(folded) is type(model)
    err, base = fold_error(model, folded, *inputs)
    assert err <= factor * base + 1e-6, f'fold not exact: error {err:.3g} vs unfolded {base:.3g}\n{folder.report}'
    return folded, folder.report

def n_batchnorms(model):
    from fasterbn.graph import is_batchnorm
    return sum(is_batchnorm(m) for m in model.modules())
