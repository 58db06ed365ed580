"""Shared checks. Every fold test states what it expects of the *planner*, not of the safety net:

- `assert_folded`: the named BatchNorms were folded (into the named layers), and the folded model is exact against float64;
- `assert_refused`: the named BatchNorm was not folded, with the given reason kind, and whatever else was folded is exact.

Both fold with `BN_Folder(check=False)`: with example_inputs the folder's own float64 check would cancel a wrong fold and
leave an exact model, so a test that relied on it would pass whether the planner was right or not. `fold_and_check` does
the same with no expectation on the report (for tests that assert on the report themselves); pass `check=True` only to
test the check itself.
"""
import copy, warnings
import pytest, torch
from fasterbn.folder import BN_Folder, randomize_bn

warnings.filterwarnings('ignore', category=FutureWarning)

def is_bn(m) -> bool:
    "Our own predicate (not fasterbn's): a module with `running_mean` and `running_var` buffers of its own."
    own = dict(m.named_buffers(recurse=False))
    return 'running_mean' in own and 'running_var' in own

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

def tensors_in(out) -> list:
    "The tensors of a model output: a tensor, nested tuples/lists/dicts, or an object with tensor attributes."
    if isinstance(out, torch.Tensor): return [out]
    if isinstance(out, (tuple, list)): return [t for o in out for t in tensors_in(o)]
    if isinstance(out, dict): return [t for o in out.values() for t in tensors_in(o)]
    return [t for o in vars(out).values() for t in tensors_in(o)] if hasattr(out, '__dict__') else []

def _copy_as(x, dtype=None):
    "A fresh copy of an input (a model may edit its inputs in place), floating tensors cast to `dtype`."
    if not isinstance(x, torch.Tensor): return x
    return x.detach().clone().to(dtype) if dtype is not None and x.is_floating_point() else x.detach().clone()

def errors(original, folded, *inputs) -> tuple[float, float]:
    """(folded error, unfolded error): max abs difference to a float64 copy of the original, in eval mode, each run on its own
    copy of the inputs. Our own oracle (like `fasterbn.fold_error`, but independent of the code under test, and safe for
    models that edit their inputs in place). Modes are restored."""
    def run(m, dtype=None):
        modes = {x: x.training for x in m.modules()}
        try:
            with torch.no_grad(): return tensors_in(m.eval()(*[_copy_as(x, dtype) for x in inputs]))
        finally:
            for x, mode in modes.items(): x.training = mode
    ref = run(copy.deepcopy(original).double(), torch.float64)
    def err(m):
        dtype = next((t.dtype for t in [*m.parameters(), *m.buffers()] if t.is_floating_point()), torch.float32)
        outs = run(m, dtype)
        assert len(outs) == len(ref), f'{len(outs)} outputs, expected {len(ref)}'
        return max((float((o.double() - r).abs().max()) for o, r in zip(outs, ref) if r.numel()), default=0.)
    return err(folded), err(original)

def output_scale(model, *inputs) -> float:
    "Largest |output| of `model` in float64 (a deep copy runs): the size that tolerances are relative to."
    ref = copy.deepcopy(model).double().eval()
    with torch.no_grad(): outs = tensors_in(ref(*[_copy_as(x, torch.float64) for x in inputs]))
    return max((float(o.abs().max()) for o in outs if o.numel()), default=0.)

def low_precision_bound(base: float, scale: float, dtype) -> float:
    """What a correct fold may cost in float16/bfloat16, for outputs of size `scale` where the unfolded model is off by `base`.
    Folding rounds each folded weight once (relative eps/2) instead of rounding the conv's output and then the BatchNorm's two
    ops (each eps/2 of values up to the output's size): the folded error stays within the unfolded one plus about one eps of
    the output (measured: at most 1.5x `base`, 0.7 eps of the output). So: 2 x `base` + 1 eps x `scale`, 1.6% of the output
    range in bfloat16 (the old bound, 40 x `base`, allowed 27%); a wrong fold is off by a large fraction of the output."""
    return 2 * base + torch.finfo(dtype).eps * scale

def assert_exact(model, folded, *inputs, factor=10, report=None):
    """The folded model is as close to float64 as the unfolded one. In float32/64: at most `factor` times its error, plus 1e-6 of
    the output's size (rounding of a re-associated sum; a wrong fold is off by a fraction of the output, orders of magnitude
    more). In float16/bfloat16: `low_precision_bound`."""
    from fasterbn.guard import FoldGuardError
    try:
        err, base = errors(model, folded, *inputs)
    except FoldGuardError:   # a fold resting on a fact the graph does not prove, checked by the folded model: a clear error, not a wrong output
        assert report is None or any(r.rests_on for r in report.folded), f'FoldGuardError without a fold that rests on anything\n{report}'
        return
    dtype = next((t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()), torch.float32)
    scale = output_scale(model, *inputs)
    bound = low_precision_bound(base, scale, dtype) if dtype in (torch.float16, torch.bfloat16) else factor * base + 1e-6 * max(scale, 1.)
    assert err <= bound, f'fold not exact: error {err:.3g} vs unfolded {base:.3g} (bound {bound:.3g}, outputs up to {scale:.3g})\n{report}'

def fold_and_check(model, *inputs, example=True, factor=10, seed=0, randomize=True, check=False, callers_inputs=False, **kw):
    """Fold a copy of `model` (with randomized BN state) with the check off (unless `check=True`): assert exactness vs float64
    and an untouched original. `example_inputs` are copies of `inputs` (fold() editing them is issue 14 defect 4, tested on
    its own), or with `callers_inputs` the inputs themselves, which must come back unchanged. Returns (folded, report)."""
    if randomize: randomize_bn(model, seed)
    model.eval()
    snap = snapshot(model)
    folder = BN_Folder(check=check, **kw)
    given = tuple(inputs if callers_inputs else (_copy_as(x) for x in inputs))
    kept = tuple(_copy_as(x) for x in inputs)
    folded = folder.fold(model, example_inputs=given if example else None)
    if callers_inputs:
        assert all(not isinstance(a, torch.Tensor) or torch.equal(a, b) for a, b in zip(given, kept)), 'fold() changed its example_inputs'
    assert_same(model, snap)
    assert type(folded) is type(model)
    assert_exact(model, folded, *inputs, factor=factor, report=folder.report)
    return folded, folder.report

def _names(bns): return [bns] if isinstance(bns, str) else list(bns)

def assert_folded(model, *inputs, bns=None, into=None, direction=None, **kw):
    """Fold with the check off; each BatchNorm of `bns` (a name or names; default: every row) is folded, into `into` (one
    layer list such as 'a, b', or a dict bn -> into) in `direction`, and the folded model is exact. Returns (folded, report)."""
    folded, report = fold_and_check(model, *inputs, **kw)
    names = [r.bn for r in report.rows] if bns is None else _names(bns)
    assert names, f'no BatchNorm in the report\n{report}'
    for bn in names:
        assert bn in report, f'no report row for `{bn}`\n{report}'
        row = report[bn]
        assert row.folded, f'`{bn}` not folded [{row.kind}]: {row.reason}\n{report}'
        want = into.get(bn) if isinstance(into, dict) else into
        if want is not None: assert row.into == want, f'`{bn}` folded into {row.into!r}, expected {want!r}\n{report}'
        if direction is not None: assert row.direction == direction, f'`{bn}` folded {row.direction}, expected {direction}\n{report}'
    return folded, report

def assert_refused(model, *inputs, bn, kind, or_folded=False, **kw):
    """Fold with the check off; `bn` (a name or names) is not folded, with a reason of `kind` (a kind or a tuple of allowed
    kinds), and is still the BatchNorm it was; whatever else was folded is exact. With `or_folded`, a fold of `bn` is accepted
    too, provided it is exact (for a refusal a later planner may lift). Returns (folded, report)."""
    folded, report = fold_and_check(model, *inputs, **kw)
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    for name in _names(bn):
        assert name in report, f'no report row for `{name}`\n{report}'
        row = report[name]
        if row.folded and or_folded: continue
        assert not row.folded, f'`{name}` folded into {row.into} ({row.direction}), expected a refusal [{"/".join(kinds)}]\n{report}'
        assert row.kind in kinds, f'`{name}` refused as [{row.kind}], expected [{"/".join(kinds)}]: {row.reason}\n{report}'
        assert row.reason, f'`{name}` refused with no reason\n{report}'
        assert type(folded.get_submodule(name)) is type(model.get_submodule(name)), f'`{name}` was replaced although refused'
    return folded, report

def n_batchnorms(model): return sum(is_bn(m) for m in model.modules())

# ---- helpers for the soundness tests ---------------------------------------------------------------
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
