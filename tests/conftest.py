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
    from fasterbn.ops import is_batchnorm
    return sum(is_batchnorm(m) for m in model.modules())

# ---- helpers for the soundness tests (additive) ----------------------------------------------------
def fold_both_ways(model, *inputs, **kw):
    "`fold_and_check` without and with `example_inputs`; returns the two reports (no_example, example)."
    return tuple(fold_and_check(model, *inputs, example=example, **kw)[1] for example in (False, True))

def proxies_in(model):
    "Paths of every torch.fx Proxy left in a module's attributes (directly or inside lists, tuples, dicts, sets)."
    import torch.fx as fx
    found = []
    def walk(v, path, depth=0):
        if isinstance(v, fx.Proxy): found.append(path)
        elif depth < 4 and isinstance(v, (list, tuple, set, frozenset)):
            for i, x in enumerate(v): walk(x, f'{path}[{i}]', depth + 1)
        elif depth < 4 and isinstance(v, dict):
            for k, x in v.items(): walk(x, f'{path}[{k!r}]', depth + 1)
    for name, m in model.named_modules():
        for k, v in vars(m).items():
            if k not in ('_modules', '_parameters', '_buffers'): walk(v, f'{name or "<model>"}.{k}')
    return found

def assert_no_tracing_leftovers(model, reference=None, inputs=()):
    """No fx Proxy anywhere on `model` and it pickles with `torch.save`; given the unfolded `reference` (and `inputs`), no
    module has an attribute that an eager forward of the reference on `inputs` would not create (e.g. `_tensor_constant0`)."""
    import copy, io
    assert not proxies_in(model), f'fx Proxy objects left on the model: {proxies_in(model)}'
    torch.save(model, io.BytesIO())
    if reference is not None:
        ran = copy.deepcopy(reference).eval()
        with torch.no_grad(): ran(*inputs)
        ref = dict(ran.named_modules())
        for name, m in model.named_modules():
            o = ref.get(name)
            if o is None or type(o) is not type(m): continue
            assert set(vars(m)) <= set(vars(o)), f'`{name or "<model>"}` gained attributes {set(vars(m)) - set(vars(o))}'

def has_negative_number(text):
    "Does a report text contain a negative count such as 'called at -2 sites' (a `dim=-1` is fine)?"
    import re
    return re.search(r'(?<![=\w.(\[,])-\d', text) is not None or re.search(r'at -\d', text) is not None
