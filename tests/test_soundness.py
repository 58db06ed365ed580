"""Soundness attacks on the planner: models a naive fold gets wrong, one or more per defect of the planner issue.

Each numbered section holds the issue's own model(s) for that defect and at least one model of ours that breaks the
same rule another way. Each test states what the planner must do, with the folder's float64 check turned off (so that the
check cannot cancel a wrong fold and hide it): `assert_folded` (which BatchNorm went into what, exact against float64) or
`assert_refused` (the reason kind). `or_folded=True` marks the refusals a later planner may lift (evidence without a run,
issue 13): a fold is then accepted if it is exact. Also: nothing crashes, nothing is left on the model, every BatchNorm
has a report row, and reasons say what the issue prescribes (key words only, case-insensitive).
"""
import copy
from collections import OrderedDict
import pytest, torch, torch.nn as nn
from fasterbn.folder import BN_Folder, randomize_bn, fold_error
from conftest import fold_and_check, errors, assert_no_tracing_leftovers, has_negative_number, assert_folded, assert_refused

torch.manual_seed(0)
x4 = torch.randn(3, 4, 9, 9)
both = pytest.mark.parametrize('example', [False, True], ids=['no_example', 'example'])

def reasons(report): return ' | '.join(r.reason for r in report.not_folded)


# ---- 1. rank guessed from any leaf module -----------------------------------------------------------
# `graph._ACTIVATIONS` holds `nn.Module` itself, so any leaf module "keeps the rank". A Linear on (N, L, F) is then taken as
# 2-D, and a BatchNorm1d over L (dim 1) gets folded into the Linear's features (last dim), which is a different axis.

class UnflattenLinearBN(nn.Module):
    "Issue's model: bn(fc(unflatten(x.flatten(1)))) -- fc sees (N, 4, 6); BatchNorm1d(4) normalizes the 4 rows, not fc's 4 outputs."
    def __init__(self):
        super().__init__(); self.unflatten, self.fc, self.bn = nn.Unflatten(1, (4, 6)), nn.Linear(6, 4), nn.BatchNorm1d(4)
    def forward(self, x): return self.bn(self.fc(self.unflatten(x.flatten(1))))

class EmbeddingLinearBN(nn.Module):
    "Issue's model: bn(fc(emb(ids))) -- the Embedding adds a dim: fc sees (N, L, E), and BatchNorm1d(L) normalizes L."
    def __init__(self):
        super().__init__(); self.emb, self.fc, self.bn = nn.Embedding(10, 5), nn.Linear(5, 4), nn.BatchNorm1d(4)
    def forward(self, ids): return self.bn(self.fc(self.emb(ids.flatten(1))))   # flatten(1): a "proven" 2-D input

class LinearBNUnflatten(nn.Module):
    "Issue's model, backward: fc(bn(unflatten(...))) -- the BatchNorm scales rows (dim 1), the Linear mixes the last dim."
    def __init__(self):
        super().__init__(); self.unflatten, self.bn, self.fc = nn.Unflatten(1, (4, 4)), nn.BatchNorm1d(4), nn.Linear(4, 3)
    def forward(self, x): return self.fc(self.bn(self.unflatten(x.flatten(1))))

class Rows(nn.Module):
    "A user block (N, F) -> (N, 4, F/4); with a hook on it, fx keeps it as a leaf."
    def forward(self, x): return x.view(x.shape[0], 4, -1)

class HookedBlockLinearBN(nn.Module):
    "Ours: the rank changes inside a hooked (hence opaque) user block, which the planner also takes as rank-keeping."
    def __init__(self):
        super().__init__(); self.rows, self.fc, self.bn = Rows(), nn.Linear(6, 4), nn.BatchNorm1d(4)
        self.rows.register_forward_hook(lambda m, i, o: None)   # an observer: changes nothing, but makes `rows` a leaf
    def forward(self, x): return self.bn(self.fc(self.rows(x.flatten(1))))

class HookedBlockBNLinear(nn.Module):
    "Ours, backward: the hooked block makes (N, 4, 4); BatchNorm1d(4) scales the rows, the Linear mixes the last dim."
    def __init__(self):
        super().__init__(); self.rows, self.bn, self.fc = Rows(), nn.BatchNorm1d(4), nn.Linear(4, 3)
        self.rows.register_forward_hook(lambda m, i, o: None)
    def forward(self, x): return self.fc(self.bn(self.rows(x.flatten(1))))

@both
@pytest.mark.parametrize('model, x', [
    (UnflattenLinearBN, torch.randn(3, 24)), (EmbeddingLinearBN, torch.randint(0, 10, (3, 2, 2))),
    (LinearBNUnflatten, torch.randn(3, 16)), (HookedBlockLinearBN, torch.randn(3, 24)), (HookedBlockBNLinear, torch.randn(3, 16))],
    ids=lambda v: v.__name__ if isinstance(v, type) else '')
def test_rank_is_not_guessed_from_unknown_modules(model, x, example):
    "The BatchNorm normalizes another axis than the Linear's features: never foldable. Without shapes, 'needs-example-inputs' is right too."
    assert_refused(model(), x, bn='bn', kind=('rank',) if example else ('rank', 'needs-example-inputs'), example=example)


# ---- 2. BatchNorm1d(1) -> cat -> Linear ------------------------------------------------------------
# A 1-channel BatchNorm is a scalar affine map, but inside a `cat` it acts only on its own slice of the Linear's inputs.

def test_tabular_model_with_one_continuous_variable():
    "Issue's model: fastai's TabularModel(n_cont=1): fc(cat([emb(a), bn_cont(c)], 1)); the fold scaled every input of fc."
    from fastai.tabular.model import TabularModel
    m = TabularModel([(10, 3), (5, 2)], n_cont=1, out_sz=2, layers=[8])
    cats, conts = torch.stack([torch.randint(0, 10, (6,)), torch.randint(0, 5, (6,))], 1), torch.randn(6, 1)
    assert_folded(m, cats, conts, into={'bn_cont': 'layers.0.0', 'layers.0.2': 'layers.1.0'}, direction='backward')
    assert_refused(m, cats, conts, bn=['bn_cont', 'layers.0.2'], kind='needs-example-inputs', or_folded=True, example=False)

class CatOneChannelFirst(nn.Module):
    "Ours: the 1-channel BatchNorm is the *first* piece (offset 0) of a 3-D cat; only row 0 of the Linear's input is its."
    def __init__(self): super().__init__(); self.bn, self.fc = nn.BatchNorm1d(1), nn.Linear(6, 3)
    def forward(self, a, b): return self.fc(torch.cat([self.bn(a), b], 1))

@both
def test_one_channel_bn_first_in_cat_of_rows(example):
    "The BatchNorm scales row 0 only; the Linear applies one matrix to every row: never foldable."
    assert_refused(CatOneChannelFirst(), torch.randn(5, 1, 6), torch.randn(5, 2, 6), bn='bn',
                   kind=('rank',) if example else ('rank', 'needs-example-inputs'), example=example)

class TwoOneChannelBNs(nn.Module):
    "Ours (found by the grammar): two 1-channel BatchNorms in one cat before a Linear each claim every input (RuntimeError)."
    def __init__(self): super().__init__(); self.bn_a, self.bn_b, self.fc = nn.BatchNorm1d(1), nn.BatchNorm1d(1), nn.Linear(2, 3)
    def forward(self, x): return self.fc(torch.cat([self.bn_a(x[:, :1]), self.bn_b(x[:, 1:])], 1))

@both
def test_two_one_channel_bns_in_one_cat(example):
    "Each BatchNorm takes its own column of the Linear's weight (the cat offsets 0 and 1)."
    if example: assert_folded(TwoOneChannelBNs(), torch.randn(5, 2), into='fc', direction='backward')
    else: assert_refused(TwoOneChannelBNs(), torch.randn(5, 2), bn=['bn_a', 'bn_b'], kind='needs-example-inputs', or_folded=True,
                         example=False)


# ---- 3. the submodule fallback misses uses from outside the child ----------------------------------
# When a child is planned alone (root untraceable, or child hooked), the parent may call or read the child's layers too.

class Block(nn.Module):
    def __init__(self):
        super().__init__(); self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
    def forward(self, x): return self.bn(self.conv(x))

def _outside_use(self, x, use):
    "The parent's own use of its child's layers."
    if use == 'call_conv': return self.block.conv(x)
    if use == 'call_bn': return self.block.bn(x)
    if use == 'read_weight': return self.block.conv.weight.mean()
    if use == 'read_running_mean': return self.block.bn.running_mean.view(1, -1, 1, 1)
    if use == 'conv_forward': return self.block.conv.forward(x)   # ours: a call that fires no module hook
    raise ValueError(use)

class UntraceableParent(nn.Module):
    "fx fails at the root (data-dependent branch), so `block` is planned alone; the parent also uses the block's layers."
    def __init__(self, use): super().__init__(); self.block, self.use = Block(), use
    def forward(self, x):
        if x.sum() > 0: x = x * 1.5
        return self.block(x) + _outside_use(self, x, self.use)

class HookedChildParent(nn.Module):
    "The root traces, `block` is hooked (so opaque, planned alone); the parent also uses the block's layers."
    def __init__(self, use):
        super().__init__(); self.block, self.use = Block(), use
        self.block.register_forward_hook(lambda m, i, o: None)
    def forward(self, x): return self.block(x) + _outside_use(self, x, self.use)

@both
@pytest.mark.parametrize('use', ['call_conv', 'call_bn', 'read_weight', 'read_running_mean', 'conv_forward'])
def test_untraceable_parent_uses_childs_layers(use, example):
    "The parent's own use of the conv or the BatchNorm forbids the fold; without example_inputs the untraceable parent is unknown."
    kinds = ('outside-use', 'read', 'reused') + (('path',) if example else ('needs-example-inputs',))   # 'path': it branches on values
    _, report = assert_refused(UntraceableParent(use), x4, bn='block.bn', kind=kinds, example=example)
    assert not has_negative_number(reasons(report)), reasons(report)

@both
@pytest.mark.parametrize('use', ['call_conv', 'call_bn', 'read_weight', 'read_running_mean', 'conv_forward'])
def test_traceable_parent_uses_hooked_childs_layers(use, example):
    _, report = assert_refused(HookedChildParent(use), x4, bn='block.bn', kind=('outside-use', 'read', 'reused'), example=example)
    assert not has_negative_number(reasons(report)), reasons(report)

class Middle(nn.Module):
    "Untraceable too: the child is two levels below the root that reuses its conv."
    def __init__(self): super().__init__(); self.block = Block()
    def forward(self, x):
        if x.mean() > 10: x = x - 1
        return self.block(x)

class GrandParent(nn.Module):
    "Ours: the reuse comes from two levels up, past an untraceable middle module."
    def __init__(self): super().__init__(); self.mid = Middle()
    def forward(self, x):
        if x.sum() > 0: x = x * 1.5
        return self.mid(x) + self.mid.block.conv(x)

@both
def test_grandparent_reuses_grandchilds_conv(example):
    kinds = ('outside-use', 'read', 'reused') + (('path',) if example else ('needs-example-inputs',))   # 'path': it branches on values
    _, report = assert_refused(GrandParent(), x4, bn='mid.block.bn', kind=kinds, example=example)
    assert not has_negative_number(reasons(report)), reasons(report)

class CleanUntraceableParent(nn.Module):
    def __init__(self): super().__init__(); self.block = Block()
    def forward(self, x):
        if x.sum() > 0: x = x * 1.5
        return self.block(x)

def test_untraceable_parent_without_example_inputs_says_they_would_help():
    "A clean untraceable parent: without example_inputs the parent's uses are unknown; if refused, the reason must ask for them."
    # its code only calls `block`, whatever the branch on values decides: every use of `block.bn` goes through `block`'s graph
    for example in (False, True):
        assert_folded(CleanUntraceableParent(), x4, bns='block.bn', into='block.conv', example=example)


# ---- 4. modules also held in plain Python containers -----------------------------------------------
# The BatchNorm slot becomes Identity, but the container still holds (and applies) the BatchNorm.

class ListOrder(nn.Module):
    "Issue's model: self.order = [self.conv, self.bn]."
    def __init__(self):
        super().__init__(); self.conv, self.bn = nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)
        self.order = [self.conv, self.bn]
    def forward(self, x):
        for m in self.order: x = m(x)
        return x

class DictOrder(nn.Module):
    "Issue's model: a dict attribute."
    def __init__(self):
        super().__init__(); self.conv, self.bn = nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)
        self.by_role = {'conv': self.conv, 'norm': self.bn}
    def forward(self, x): return self.by_role['norm'](self.by_role['conv'](x))

class NestedContainers(nn.Module):
    "Ours: the reference sits deep inside a dict of lists of tuples."
    def __init__(self):
        super().__init__(); self.conv, self.bn = nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)
        self.cfg = {'stages': [(self.conv, self.bn)]}
    def forward(self, x):
        conv, bn = self.cfg['stages'][0]
        return bn(conv(x))

class UnregisteredAttribute(nn.Module):
    "Ours: a back-reference stored with object.__setattr__ (a common way to avoid registering a module twice)."
    def __init__(self):
        super().__init__(); self.conv, self.bn = nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)
        object.__setattr__(self, '_norm', self.bn)
    def forward(self, x): return self._norm(self.conv(x))

@both
@pytest.mark.parametrize('model', [ListOrder, DictOrder, NestedContainers, UnregisteredAttribute], ids=lambda c: c.__name__)
def test_modules_held_outside_the_module_tree(model, example):
    "The container would keep applying the BatchNorm after its slot is replaced."
    assert_refused(model(), x4, bn='bn', kind='aliased', example=example)


# ---- 5. add with broadcasting ----------------------------------------------------------------------
# Folding across `add` scales each operand's channels; an operand that broadcasts onto other dims has no channel axis there.

class BroadcastLinearAdd(nn.Module):
    "Issue's model: bn(conv(x) + fc(p.view(3, 5))): fc's (3, 5) output broadcasts over (H, W), its features lie along W."
    def __init__(self):
        super().__init__(); self.conv, self.fc, self.bn = nn.Conv2d(4, 5, 3, padding=1), nn.Linear(5, 5), nn.BatchNorm2d(5)
    def forward(self, x, p): return self.bn(self.conv(x) + self.fc(p.view(3, 5)))

class BroadcastConv1dAdd(nn.Module):
    "Ours: a Conv1d output (1, 5, W) added to a Conv2d output (N, 5, 5, W): the Conv1d's channels land on H, not on channels."
    def __init__(self):
        super().__init__(); self.conv2, self.conv1, self.bn = nn.Conv2d(4, 5, 1), nn.Conv1d(3, 5, 1), nn.BatchNorm2d(5)
    def forward(self, x, z): return self.bn(self.conv2(x) + self.conv1(z))

@both
def test_add_broadcasting_linear_over_spatial_dims(example):
    "Broadcasting aligns from the back: fc's features land on W, not on the BatchNorm's channels (aligned from the front they would)."
    assert_refused(BroadcastLinearAdd(), torch.randn(2, 4, 3, 5), torch.randn(15), bn='bn', kind='rank', example=example)

@both
def test_add_broadcasting_conv1d_onto_conv2d(example):
    assert_refused(BroadcastConv1dAdd(), torch.randn(2, 4, 5, 6), torch.randn(1, 3, 6), bn='bn', kind='rank', example=example)

class BroadcastRowAdd(nn.Module):
    "Ours: a Linear's (5,) output (no batch, no spatial dims) added to a Conv2d output (N, 5, 3, 5): it lands on W."
    def __init__(self):
        super().__init__(); self.conv, self.fc, self.bn = nn.Conv2d(4, 5, 1), nn.Linear(3, 5), nn.BatchNorm2d(5)
    def forward(self, x, p): return self.bn(self.conv(x) + self.fc(p))

@both
def test_add_broadcasting_a_vector_onto_the_last_dim(example):
    "Aligned from the front, fc's 5 features would be taken as the 5 channels (dim 0 of a 1-D value): wrong by O(1)."
    assert_refused(BroadcastRowAdd(), torch.randn(2, 4, 3, 5), torch.randn(3), bn='bn', kind='rank', example=example)

class BroadcastPooledAdd(nn.Module):
    "Ours, the foldable case: a conv of the pooled input, (N, 5, 1, 1), broadcasts over (H, W); its channels are the BatchNorm's."
    def __init__(self):
        super().__init__(); self.conv, self.c2, self.bn = nn.Conv2d(4, 5, 1), nn.Conv2d(4, 5, 1), nn.BatchNorm2d(5)
    def forward(self, x): return self.bn(self.conv(x) + self.c2(x.mean((2, 3), keepdim=True)))

@both
def test_add_broadcasting_a_pooled_operand_folds_into_both(example):
    assert_folded(BroadcastPooledAdd(), torch.randn(2, 4, 3, 5), into='conv, c2', direction='forward', example=example)


# ---- 6. unbatched input ----------------------------------------------------------------------------
# An unbatched conv outputs (C, ...): the BatchNorm after it takes dim 0 as the batch and normalizes dim 1.

@both
@pytest.mark.parametrize('conv, bn, x', [
    (nn.Conv1d(4, 5, 3), nn.BatchNorm1d(5), torch.randn(4, 7)),            # issue: (5, 5): BatchNorm1d normalizes L
    (nn.Conv2d(4, 4, 3), nn.BatchNorm1d(4), torch.randn(4, 6, 6)),         # issue: (4, 4, 4): BatchNorm1d normalizes H
    (nn.Conv3d(3, 4, 1), nn.BatchNorm2d(4), torch.randn(3, 4, 5, 5)),      # ours: (4, 4, 5, 5): BatchNorm2d normalizes D
    (nn.ConvTranspose1d(4, 5, 2), nn.BatchNorm1d(5), torch.randn(4, 4)),   # ours: transposed, (5, 5)
    (nn.Conv1d(2, 5, 2), nn.BatchNorm1d(3), torch.randn(2, 4))],           # ours: (5, 3): 3 features vs 5 channels (IndexError)
    ids=['conv1d', 'conv2d', 'conv3d', 'convtranspose1d', 'conv1d_count_mismatch'])
def test_unbatched_conv_then_batchnorm(conv, bn, x, example):
    "The BatchNorm normalizes the conv's spatial dim 1 (dim 0 is its batch): never foldable."
    assert_refused(nn.Sequential(conv, bn), x, bn='1', kind=('rank',) if example else ('rank', 'needs-example-inputs'), example=example)

@both
def test_unbatched_batchnorm_then_conv(example):
    "Ours, backward: BatchNorm1d on an unbatched (C, L) tensor scales columns (L); Conv1d reads rows (dim 0) as channels."
    assert_refused(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(4), nn.Conv1d(4, 6, 1)), torch.randn(4, 4), bn='1',
                   kind=('rank',) if example else ('rank', 'needs-example-inputs'), example=example)


# ---- 7. crash or wrong reason on traced shapes -----------------------------------------------------
class ShapeOps(nn.Module):
    "fc then BatchNorm1d, with the Linear's input reshaped by a shape computed at run time."
    def __init__(self, how): super().__init__(); self.how, self.fc, self.bn = how, nn.Linear(6, 4), nn.BatchNorm1d(4)
    def forward(self, x):
        if self.how == 'torch_reshape_expr': x = torch.reshape(x, x.shape[:1] + (-1,))   # issue: TypeError len(Node)
        elif self.how == 'view_shape': x = x.view(x.shape)                              # issue: "1-D"
        elif self.how == 'view_dtype': x = x.view(torch.float32)                        # issue: "1-D" (float32 only)
        elif self.how == 'view_own_dtype': x = x.view(x.dtype)                          # ours: a dtype known only when run
        elif self.how == 'method_reshape_expr': x = x.reshape(x.shape[:1] + (-1,))      # ours
        elif self.how == 'view_size': x = x.view(x.size())                              # ours
        elif self.how == 'torch_reshape_kw': x = torch.reshape(x, shape=x.shape)        # ours
        return self.bn(self.fc(x))

@both
@pytest.mark.parametrize('how', ['torch_reshape_expr', 'view_shape', 'method_reshape_expr', 'view_size', 'torch_reshape_kw',
                                 'view_own_dtype'])
def test_shape_computed_at_run_time(how, example):
    x = torch.randn(5, 2, 3) if 'expr' in how else torch.randn(5, 6)
    if example: _, report = assert_folded(ShapeOps(how), x, into='fc', direction='forward')
    else: _, report = assert_refused(ShapeOps(how), x, bn='bn', kind='needs-example-inputs', or_folded=True, example=False)
    assert '1-d' not in reasons(report).lower(), reasons(report)

@both
def test_view_as_float32_is_not_rank_one(example):
    "x.view(torch.float32) keeps the rank; checked in float32 (a float64 reference can't run a float32 view)."
    m = randomize_bn(ShapeOps('view_dtype')).eval(); x = torch.randn(5, 6)
    f = BN_Folder(check=False); folded = f.fold(m, example_inputs=x if example else None)
    torch.testing.assert_close(folded(x), m(x), rtol=1e-5, atol=1e-5)
    assert '1-d' not in reasons(f.report).lower(), reasons(f.report)
    row = f.report['bn']
    assert row.into == 'fc' if example else (row.folded or row.kind == 'needs-example-inputs'), f.report


# ---- 8. tracing side effects stay on the model -----------------------------------------------------
class StoresFeature(nn.Module):
    "Issue's model: forward stores an intermediate on the module; tracing stores an fx Proxy there."
    def __init__(self): super().__init__(); self.conv, self.bn = nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)
    def forward(self, x):
        y = self.conv(x); self.feat = y
        return self.bn(y)

class CachesFeatures(nn.Module):
    "Ours: forward appends to a list attribute (a mutation, not a setattr)."
    def __init__(self): super().__init__(); self.conv, self.bn, self.cache = nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), []
    def forward(self, x):
        y = self.bn(self.conv(x)); self.cache.append(y.detach()); del self.cache[:-1]
        return y

class TensorConstant(nn.Module):
    "Ours: a tensor created in forward; fx registers it as `_tensor_constant0` on the traced module."
    def __init__(self): super().__init__(); self.conv, self.bn = nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)
    def forward(self, x): return self.bn(self.conv(x)) * torch.tensor(2.0)

@both
@pytest.mark.parametrize('model', [StoresFeature, CachesFeatures, TensorConstant], ids=lambda c: c.__name__)
def test_folded_copy_has_no_tracing_leftovers(model, example):
    "Checked before any forward of the folded copy, which would overwrite what the trace left."
    m = randomize_bn(model()).eval(); ref = copy.deepcopy(m)
    folded = BN_Folder().fold(m, example_inputs=x4 if example else None)
    assert_no_tracing_leftovers(folded, reference=ref, inputs=(x4,))
    assert_no_tracing_leftovers(m, reference=ref, inputs=(x4,))
    assert_folded(model(), x4, into='conv', example=example)

@pytest.mark.parametrize('model', [StoresFeature, CachesFeatures, TensorConstant], ids=lambda c: c.__name__)
def test_inplace_fold_has_no_tracing_leftovers(model):
    m = randomize_bn(model()).eval(); ref = copy.deepcopy(m)
    f = BN_Folder(); f.fold(m, inplace=True)
    assert_no_tracing_leftovers(m, reference=ref, inputs=(x4,))
    assert f.report['bn'].into == 'conv', f.report

class StoresLinearFeature(nn.Module):
    "Like StoresFeature, with a Linear whose rank needs example_inputs (so bad ones make the fold raise)."
    def __init__(self): super().__init__(); self.fc, self.bn = nn.Linear(5, 4), nn.BatchNorm1d(4)
    def forward(self, x):
        y = self.fc(x); self.feat = y
        return self.bn(y)

def test_inplace_fold_that_fails_has_no_tracing_leftovers():
    "Issue: the fold raises (bad example_inputs), and the model must still be as it was: no Proxy stored by the trace."
    m = randomize_bn(StoresLinearFeature()).eval()
    with pytest.raises(ValueError): BN_Folder().fold(m, inplace=True, example_inputs=(torch.randn(2, 3),))
    assert_no_tracing_leftovers(m)

class CountsCalls(nn.Module):
    "Issue: forward updates a buffer; shape propagation must not run forward on the model that is returned."
    def __init__(self):
        super().__init__(); self.fc, self.bn = nn.Linear(5, 4), nn.BatchNorm1d(4)
        self.register_buffer('calls', torch.zeros(()))
    def forward(self, x):
        self.calls.add_(1)
        return self.bn(self.fc(x))

class CountsCallsUntraceable(CountsCalls):
    "Ours: an untraceable root, so the run on example_inputs is the recorded one, not ShapeProp."
    def forward(self, x):
        if x.sum() > 0: x = x * 1.5
        return super().forward(x)

@pytest.mark.parametrize('model', [CountsCalls, CountsCallsUntraceable], ids=lambda c: c.__name__)
@pytest.mark.parametrize('inplace', [False, True])
def test_running_example_inputs_leaves_buffers_alone(model, inplace):
    m = randomize_bn(model()).eval()
    f = BN_Folder(); folded = f.fold(m, inplace=inplace, example_inputs=torch.randn(6, 5))   # check on: its runs count too
    assert float(folded.calls) == 0 and float(m.calls) == 0
    row = f.report['bn']   # the untraceable root: refused today; a trace that follows the example (issue 13) may fold it
    assert row.into == 'fc' or (model is CountsCallsUntraceable and row.kind == 'untraceable'), f.report


# ---- 9. global module hooks ------------------------------------------------------------------------
def _clamp_conv_output(m, args, out): return out.clamp(-1, 1) if isinstance(m, nn.Conv2d) else None
def _clamp_bn_input(m, args): return (args[0].clamp(-1, 1),) if isinstance(m, nn.BatchNorm2d) else None

@both
@pytest.mark.parametrize('register, hook', [
    (nn.modules.module.register_module_forward_hook, _clamp_conv_output),        # issue: clamps every conv output
    (nn.modules.module.register_module_forward_pre_hook, _clamp_bn_input)],      # ours: clamps every BatchNorm input
    ids=['forward_hook_on_conv', 'pre_hook_on_bn'])
def test_global_module_hooks(register, hook, example):
    handle = register(hook)
    try: assert_refused(nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)), x4 * 3, bn='1', kind='hooks', example=example)
    finally: handle.remove()


# ---- 10. underflow in fp16 -------------------------------------------------------------------------
# Overflow cancels a fold; underflow must too (or the fold must not lose precision): subnormal weights keep few bits.

def _fp16_check(m, x, factor=4):
    "Refused as 'numeric' (or folded, if a later fold keeps the precision): either way no worse than `factor` x the unfolded error."
    m = m.eval().half(); x = x.half()
    f = BN_Folder(); folded = f.fold(m)
    err, base = errors(m, folded, x)
    assert err <= factor * base, f'folded fp16 error {err:.3g} vs unfolded {base:.3g}\n{f.report}'
    assert all(r.folded or r.kind == 'numeric' for r in f.report), f.report

def test_fp16_tiny_scale_underflows_folded_weights():
    "Issue: gamma = 1e-6 makes the folded weights ~1e-6, fp16 subnormals (~30x the unfolded error)."
    m = nn.Sequential(nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8)); nn.init.normal_(m[0].weight)
    with torch.no_grad(): m[1].weight.fill_(1e-6); m[1].bias.zero_(); m[1].running_mean.zero_(); m[1].running_var.fill_(1.)
    _fp16_check(m, torch.randn(2, 4, 9, 9) * 100)

def test_fp16_small_weights_times_large_variance_underflow():
    "Ours: neither factor is small alone (weights ~5e-4, s = 1/sqrt(6e4)), their product is subnormal (~20x)."
    m = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.BatchNorm1d(8))
    nn.init.normal_(m[1].weight, std=5e-4); nn.init.zeros_(m[1].bias)
    with torch.no_grad(): m[2].running_var.fill_(6e4); m[2].running_mean.zero_(); m[2].bias.zero_()
    _fp16_check(m, torch.randn(8, 4, 3, 3) * 100)


# ---- 11. forward reads attributes the fold changes -------------------------------------------------
class ReadsNumFeatures(nn.Module):
    "Issue: forward reads self.bn.num_features; after the fold it is an Identity (AttributeError)."
    def __init__(self): super().__init__(); self.conv, self.bn = nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)
    def forward(self, x): return self.bn(self.conv(x)) / self.bn.num_features

class ReadsBNWeightShape(nn.Module):
    "Ours (a guard; today it is refused, since fx records `self.bn.weight` as a get_attr): Identity has no weight."
    def __init__(self): super().__init__(); self.conv, self.bn = nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)
    def forward(self, x): return self.bn(self.conv(x)) / self.bn.weight.shape[0]

@both
@pytest.mark.parametrize('model', [ReadsNumFeatures, ReadsBNWeightShape], ids=lambda c: c.__name__)
def test_forward_reads_batchnorm_attributes(model, example):
    "num_features survives the fold (the replacement keeps it); a read of the BatchNorm's tensors is refused."
    if model is ReadsNumFeatures: folded, _ = assert_folded(model(), x4, into='conv', example=example)
    else: folded, _ = assert_refused(model(), x4, bn='bn', kind='read', example=example)
    folded(x4)   # must run

class UsesConvParameters(nn.Module):
    "Issue: forward computes from self.conv.parameters() (a constant to fx); the fold changes that value."
    def __init__(self): super().__init__(); self.conv, self.bn = nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)
    def forward(self, x): return self.bn(self.conv(x)) + sum(p.sum() for p in self.conv.parameters())

class ChecksConvBias(nn.Module):
    "Ours: forward branches on `self.conv.bias is None`; the fold gives the conv a bias."
    def __init__(self): super().__init__(); self.conv, self.bn = nn.Conv2d(4, 4, 3, bias=False), nn.BatchNorm2d(4)
    def forward(self, x):
        y = self.bn(self.conv(x))
        return y + 1 if self.conv.bias is None else y

class ChecksBNType(nn.Module):
    "Ours: forward branches on isinstance(self.bn, nn.BatchNorm2d); after the fold it is something else."
    def __init__(self): super().__init__(); self.conv, self.bn = nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)
    def forward(self, x):
        y = self.bn(self.conv(x))
        return y * 2 if isinstance(self.bn, nn.BatchNorm2d) else y

def test_forward_uses_conv_parameters_with_example_inputs():
    "The run on example_inputs sees the parameters read outside the conv's forward: the planner itself refuses."
    assert_refused(UsesConvParameters(), x4, bn='bn', kind='read')

@pytest.mark.parametrize('model', [ChecksConvBias, ChecksBNType], ids=lambda c: c.__name__)
def test_the_check_cancels_what_the_graph_cannot_show(model):
    """The safety net itself (check on): a forward that inspects its modules changes its output when they change. The planner's
    own verdict on these models is tested in test_issue14.py (defect 3)."""
    assert_refused(model(), x4, bn='bn', kind=('read', 'inspected', 'check'), check=True)


# ---- 12. unrecognized or unreported BatchNorms -----------------------------------------------------
def _randomize_frozen(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if type(m).__name__.startswith('FrozenBatchNorm'):
            c = m.running_mean.numel()
            m.weight.copy_(torch.randn(c, generator=g) * .5 + 1); m.bias.copy_(torch.randn(c, generator=g) * .5)
            m.running_mean.copy_(torch.randn(c, generator=g) * .5); m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + .25)
    return model

@torch.no_grad()
def test_timm_frozen_batchnormact_is_reported_and_folded():
    pytest.importorskip('timm')
    from timm.layers import FrozenBatchNormAct2d
    m = _randomize_frozen(nn.Sequential(nn.Conv2d(4, 4, 3), FrozenBatchNormAct2d(4, act_layer=nn.ReLU)))
    folded, report = assert_folded(m, x4, into='0', direction='forward', randomize=False)
    assert len(report) == 1, report

@torch.no_grad()
def test_timm_frozen_mobilenetv3_reports_every_batchnorm():
    timm = pytest.importorskip('timm')
    from timm.layers import freeze_batch_norm_2d
    m = freeze_batch_norm_2d(timm.create_model('mobilenetv3_small_050', pretrained=False, num_classes=10))
    _randomize_frozen(randomize_bn(m))
    names = [n for n, mod in m.named_modules() if 'BatchNorm' in type(mod).__name__]
    assert len(names) > 30
    _, report = assert_folded(m, torch.randn(2, 3, 64, 64), randomize=False)
    missing = [n for n in names if n not in {r.bn for r in report.rows}]
    assert not missing, f'{len(missing)} BatchNorms without a report row, e.g. {missing[:3]}'

def _named_bn_model():
    return randomize_bn(nn.Sequential(OrderedDict(conv=nn.Conv2d(4, 4, 3), stem_bn=nn.BatchNorm2d(4), relu=nn.ReLU(),
                                                  conv2=nn.Conv2d(4, 4, 1), head_bn=nn.BatchNorm2d(4)))).eval()

def _fold_text(model, **kw):
    "The report (with notes and untraceable parts), or the error message if the fold raises a clear error."
    f = BN_Folder()
    try: f.fold(model, **kw)
    except (TypeError, ValueError) as e: return str(e)
    return f'{f.report.table()}\n' + '\n'.join(f.report.notes) + '\n'.join(f'{k}: {v}' for k, v in f.report.untraceable.items())

@pytest.mark.parametrize('scripting', ['script', 'trace'])
def test_torchscript_model_says_fold_before_scripting(scripting):
    "Issue (script) and ours (torch.jit.trace): say to fold before scripting, and list the BatchNorms."
    m = _named_bn_model()
    sm = torch.jit.script(m) if scripting == 'script' else torch.jit.trace(m, x4)
    text = _fold_text(sm).lower()
    assert 'script' in text and 'before' in text, text
    assert 'stem_bn' in text and 'head_bn' in text, text

def test_partly_scripted_model_reports_the_scripted_batchnorm():
    "Ours: only a child is scripted; its BatchNorm must still get a report row."
    m = _named_bn_model()
    m.tail = torch.jit.script(randomize_bn(nn.Sequential(OrderedDict(conv=nn.Conv2d(4, 4, 1), tail_bn=nn.BatchNorm2d(4)))).eval())
    f = BN_Folder(); f.fold(m, example_inputs=x4)
    assert 'tail.tail_bn' in {r.bn for r in f.report.rows}, f.report
    assert 'script' in f.report['tail.tail_bn'].reason.lower()

@pytest.mark.parametrize('model, x', [
    (lambda: nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)), None),                        # issue
    (lambda: nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4)), torch.randn(3, 5, device='meta'))],  # ours: shapes on meta
    ids=['conv', 'linear_with_meta_inputs'])
def test_meta_device_model_does_not_crash(model, x):
    m = model().to('meta').eval()
    f = BN_Folder(); f.fold(m, example_inputs=x)
    assert len(f.report) == 1
    row = f.report.rows[0]
    assert row.folded or row.reason


# ---- 13. report wording and API edges --------------------------------------------------------------
def test_report_missing_key_raises_keyerror():
    f = BN_Folder(); f.fold(_named_bn_model())
    with pytest.raises(KeyError): f.report['missing']

def test_report_membership():
    "Ours: with only __getitem__ defined, `in` falls back to report[0], report[1]...: `'stem_bn' in report` was False."
    f = BN_Folder(); f.fold(_named_bn_model())
    assert 'stem_bn' in f.report and 'missing' not in f.report

def test_fold_error_leaves_original_mode_alone():
    "Issue: a train-mode original is left in eval mode."
    m = randomize_bn(nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))).train()
    folded = BN_Folder().fold(m)
    fold_error(m, folded, x4)
    assert all(mod.training for mod in m.modules())

def test_fold_error_leaves_mixed_modes_alone():
    "Ours: mixed modes (a frozen, eval-mode backbone inside a training model) come back exactly as they were."
    m = randomize_bn(nn.Sequential(nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)).eval(), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)))
    m.train(); m[0].eval()
    modes = {n: mod.training for n, mod in m.named_modules()}
    fold_error(m, BN_Folder().fold(m), x4)
    assert {n: mod.training for n, mod in m.named_modules()} == modes

def test_dict_example_inputs_get_a_clear_error(capfd):
    with pytest.raises((TypeError, ValueError)) as e:
        BN_Folder().fold(nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)).eval(), example_inputs={'x': x4})
    assert 'example_inputs' in str(e.value) and 'dict' in str(e.value).lower(), str(e.value)
    assert 'Traceback' not in capfd.readouterr().err

@pytest.mark.parametrize('model', [
    lambda: nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4)),                                    # issue: ShapeProp's print
    lambda: nn.Sequential(nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4)), nn.Linear(4, 2))],   # ours: nested, other layout
    ids=['flat', 'nested'])
def test_bad_example_inputs_print_no_traceback(model, capfd):
    with pytest.raises(ValueError, match='example_inputs'):
        BN_Folder().fold(model().eval(), example_inputs=torch.randn(1, 3))
    assert 'Traceback' not in capfd.readouterr().err

class CatDim(nn.Module):
    def __init__(self, how):
        super().__init__(); self.how, self.a, self.b, self.bn = how, nn.Conv2d(4, 3, 3), nn.Conv2d(4, 5, 3), nn.BatchNorm2d(8)
    def forward(self, x):
        a, b = self.a(x), self.b(x)
        if self.how == 'neg': y = torch.cat([a, b], dim=-3)
        elif self.how == 'axis': y = torch.cat([a, b], axis=1)
        else: y = torch.cat(tensors=[a, b], dim=1)
        return self.bn(y)

def test_cat_negative_dim_asks_for_example_inputs():
    "Issue: cat(dim=-3) is channels only for a 4-D tensor; without shapes the reason must ask for example_inputs."
    _, report = assert_refused(CatDim('neg'), x4, bn='bn', kind='needs-example-inputs', or_folded=True, example=False)
    assert report['bn'].folded or 'example_inputs' in report['bn'].reason, report['bn'].reason
    assert_folded(CatDim('neg'), x4, into='a, b')

@both
def test_cat_with_axis_keyword_is_a_cat(example):
    "Issue: torch.cat(..., axis=1) is a cat along channels."
    assert_folded(CatDim('axis'), x4, into='a, b', example=example)

@both
def test_cat_with_tensors_keyword_does_not_crash(example):
    "Ours: torch.cat(tensors=[...], dim=1) has no positional args."
    assert_folded(CatDim('tensors_kw'), x4, into='a, b', example=example)

def _parametrized_block():
    return nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Conv2d(4, 4, 3)), nn.BatchNorm2d(4))

class UntraceableWithBlock(nn.Module):
    "Issue: the reason named the child's conv `0` instead of `b.0`."
    def __init__(self): super().__init__(); self.b = _parametrized_block()
    def forward(self, x):
        if x.sum() > 0: x = x * 1.5
        return self.b(x)

class TraceableWithHookedBlock(nn.Module):
    "Ours: same names through the other fallback (a hooked, hence opaque, child of a traceable root)."
    def __init__(self):
        super().__init__(); self.b = _parametrized_block(); self.b.register_forward_hook(lambda m, i, o: None)
    def forward(self, x): return self.b(x)

@pytest.mark.parametrize('model', [UntraceableWithBlock, TraceableWithHookedBlock], ids=lambda c: c.__name__)
def test_reasons_use_full_qualified_names(model):
    _, report = assert_refused(model(), x4, bn='b.1', kind='parametrized')
    reason = report['b.1'].reason
    assert 'b.0' in reason and '`0`' not in reason, reason
