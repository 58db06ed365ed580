"Hand-made models for every folding rule: what must fold, what must not, and exactness either way."
import copy, pytest, torch, torch.nn as nn, torch.nn.functional as F
from fasterbn.folder import BN_Folder, randomize_bn, fold_error
from conftest import fold_and_check, snapshot, assert_same, assert_folded, assert_refused, low_precision_bound, output_scale, errors

torch.manual_seed(0)
x4 = torch.randn(3, 4, 9, 9)

def folded_names(report): return [r.bn for r in report.folded]

# ---- forward folds ---------------------------------------------------------------------------------
@pytest.mark.parametrize('conv', [
    nn.Conv1d(4, 6, 3), nn.Conv2d(4, 6, 3, bias=False), nn.Conv3d(4, 6, 3, padding=1, padding_mode='circular'),
    nn.Conv2d(4, 8, 3, groups=2), nn.Conv2d(4, 4, 3, groups=4, padding=1), nn.Conv2d(4, 8, 3, groups=4, stride=2, dilation=2),
    nn.ConvTranspose1d(4, 6, 3, stride=2), nn.ConvTranspose2d(4, 6, 3, stride=2, output_padding=1, groups=2, bias=False),
    nn.ConvTranspose3d(4, 8, 2, stride=2, groups=4)], ids=lambda c: repr(c)[:60])
def test_forward_conv_kinds(conv):
    d = conv.weight.dim() - 2
    bn = [nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d][d - 1](conv.out_channels)
    x = torch.randn(2, 4, *[7] * d)
    folded, report = fold_and_check(nn.Sequential(conv, bn), x)
    assert report.n_folded == 1 and report.rows[0].direction == 'forward'
    assert isinstance(folded[1], nn.Identity) and folded[0].bias is not None

def test_bn_without_affine():
    assert_folded(nn.Sequential(nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5, affine=False)), x4, into='0', direction='forward')

def test_linear_2d_folds_without_example_inputs():
    m = nn.Sequential(nn.Flatten(), nn.Linear(4 * 81, 7), nn.BatchNorm1d(7))
    _, report = fold_and_check(m, x4, example=False)
    assert report.n_folded == 1

def test_linear_3d_before_batchnorm1d_never_folds_into_features():
    # BatchNorm1d on (N, L, F) normalizes dim 1 = L: folding it into the Linear's features would be wrong
    m = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(4))
    x = torch.randn(3, 4, 5)
    for example in (True, False):
        _, report = assert_refused(m, x, bn='1', kind=('rank',) if example else ('rank', 'needs-example-inputs'), example=example)
        assert 'Linear' in report.rows[0].reason

def test_linear_3d_same_width_is_still_refused():
    m = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))   # num_features == out_features: the trap
    assert_refused(m, torch.randn(3, 4, 4), bn='1', kind='rank')

def test_linear_unknown_rank_needs_example_inputs():
    m = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6))
    x = torch.randn(8, 5)
    _, report = fold_and_check(m, x, example=False)
    assert report.n_folded == 0 and 'example_inputs' in report.rows[0].reason
    _, report = fold_and_check(m, x)
    assert report.n_folded == 1

def test_skip_connection_output_is_not_folded():
    class M(nn.Module):
        def __init__(self): super().__init__(); self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        def forward(self, x): y = self.conv(x); return F.relu(self.bn(y)) + y
    _, report = assert_refused(M(), x4, bn='bn', kind='shared-output')
    assert 'also used by' in report['bn'].reason

def test_module_called_twice():
    class M(nn.Module):
        def __init__(self): super().__init__(); self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        def forward(self, x): return self.bn(self.conv(torch.relu(self.conv(x))))
    _, report = assert_refused(M(), x4, bn='bn', kind='reused')
    assert '2 sites' in report['bn'].reason

def test_bn_called_twice():
    class M(nn.Module):
        def __init__(self): super().__init__(); self.c1, self.c2, self.bn = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        def forward(self, x): return self.bn(self.c1(x)) + self.bn(self.c2(x))
    _, report = assert_refused(M(), x4, bn='bn', kind='reused')
    assert '2 sites' in report['bn'].reason

def test_registration_order_differs_from_execution_order():
    class M(nn.Module):   # fasterai pairs each BN with the module registered before it: here that is wrong
        def __init__(self):
            super().__init__()
            self.bn_a, self.conv_b, self.bn_b, self.conv_a = nn.BatchNorm2d(6), nn.Conv2d(6, 5, 3), nn.BatchNorm2d(5), nn.Conv2d(4, 6, 3)
        def forward(self, x): return self.bn_b(self.conv_b(torch.relu(self.bn_a(self.conv_a(x)))))
    _, report = fold_and_check(M(), x4)
    assert report['bn_a'].into == 'conv_a' and report['bn_b'].into == 'conv_b'

def test_bn_as_model_output_and_first_module():
    m = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    assert_folded(m, x4, bns='3', into='2')
    assert_refused(m, x4, bn='0', kind='no-layer')

def test_tied_weights_are_not_folded():
    m = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.ReLU())
    m[2].weight = m[0].weight
    _, report = assert_refused(m, x4, bn='1', kind='tied')
    assert 'shares its weights' in report['1'].reason

def test_parametrized_layer_is_not_folded():
    m = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Conv2d(4, 4, 3)), nn.BatchNorm2d(4))
    _, report = assert_refused(m, x4, bn='1', kind='parametrized')
    assert 'parametrization' in report['1'].reason

def test_hooked_conv_is_not_folded_and_hooked_container_is_folded_inside():
    m = nn.Sequential(nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    m[0].register_forward_hook(lambda mod, i, o: o * 2)   # changes the container's output: nothing may cross it
    m[1].register_forward_hook(lambda mod, i, o: o + 1)   # changes the conv's output: nothing may fold into it
    assert_folded(m, x4, bns='0.1', into='0.0')
    assert_refused(m, x4, bn='2', kind='hooks')

def test_batchnorm_subclass_with_activation():
    class BNReLU(nn.BatchNorm2d):
        def forward(self, x): return F.relu(super().forward(x))
    _, report = assert_refused(nn.Sequential(nn.Conv2d(4, 4, 3), BNReLU(4)), x4, bn='1', kind='unknown-kind')
    assert 'redefines forward' in report['1'].reason

def test_timm_batchnormact_keeps_its_activation():
    timm = pytest.importorskip('timm')
    from timm.layers import BatchNormAct2d
    m = nn.Sequential(nn.Conv2d(4, 4, 3), BatchNormAct2d(4, act_layer=nn.ReLU))
    folded, report = assert_folded(m, x4, into='0')
    assert type(folded[1]) is nn.ReLU   # what it applied after normalizing stays

def test_frozen_batchnorm():
    from torchvision.ops import FrozenBatchNorm2d
    bn = FrozenBatchNorm2d(4)
    bn.weight.normal_(); bn.bias.normal_(); bn.running_mean.normal_(); bn.running_var.uniform_(.5, 2)
    m = nn.Sequential(nn.Conv2d(4, 4, 3), bn)
    assert_folded(m, x4, into='0', randomize=False)

def test_batch_statistics_and_nonfinite_are_reported():
    m = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    randomize_bn(m)
    m[3].running_var[0] = float('nan')
    f = BN_Folder(); f.fold(m.eval())
    assert 'batch statistics' in f.report['1'].reason and 'non-finite' in f.report['3'].reason
    assert (f.report['1'].kind, f.report['3'].kind) == ('batch-stats', 'bad-stats'), f.report

def test_training_mode_model_is_folded_as_eval_and_returned_in_eval():
    m = randomize_bn(nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))).train()
    folded = BN_Folder().fold(m)
    assert not folded.training and m.training
    torch.testing.assert_close(folded(x4), m.eval()(x4), rtol=1e-5, atol=1e-5)

def test_not_a_module_and_bad_inputs():
    with pytest.raises(TypeError, match='needs an nn.Module'): BN_Folder().fold(lambda x: x)
    with pytest.raises(ValueError, match='example_inputs'):
        BN_Folder().fold(nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4)), example_inputs=torch.randn(1, 3))

# ---- dtypes, memory formats --------------------------------------------------------------------------
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_low_precision(dtype):
    m = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8))
    m = randomize_bn(m).eval().to(dtype)
    x = x4.to(dtype)
    f = BN_Folder(); folded = f.fold(m)
    assert f.report.n_folded == 2 and all(p.dtype == dtype for p in folded.parameters()), f.report
    err, base = errors(m, folded, x)
    assert err <= low_precision_bound(base, output_scale(m, x), dtype), (err, base, output_scale(m, x))

def test_channels_last_and_requires_grad_are_kept():
    m = randomize_bn(nn.Sequential(nn.Conv2d(4, 8, 3, bias=False), nn.BatchNorm2d(8))).eval().to(memory_format=torch.channels_last)
    m[0].weight.requires_grad_(False)
    folded = BN_Folder().fold(m)
    w = folded[0].weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    assert not w.requires_grad and not folded[0].bias.requires_grad
    torch.testing.assert_close(folded(x4.to(memory_format=torch.channels_last)), m(x4), rtol=1e-5, atol=1e-5)

def test_fp16_overflow_cancels_the_fold():
    m = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)).eval()
    m[1].running_var.fill_(1e-12); m[1].eps = 1e-12; m[0].weight.data.fill_(1.)
    f = BN_Folder(); folded = f.fold(m.half())
    assert not f.report['1'].folded and f.report['1'].kind == 'numeric' and 'overflow' in f.report['1'].reason
    assert all(torch.isfinite(p).all() for p in folded.parameters())

# ---- transactions --------------------------------------------------------------------------------
def test_inplace_folds_the_model_itself():
    m = randomize_bn(nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))).eval()
    ref = m(x4)
    out = BN_Folder().fold(m, inplace=True)
    assert out is m and isinstance(m[1], nn.Identity)
    torch.testing.assert_close(m(x4), ref, rtol=1e-5, atol=1e-5)

def test_inplace_failure_leaves_model_exactly_as_it_was():
    class Stubborn(nn.Sequential):   # refuses to have its BatchNorm replaced, after the first fold was applied
        def __setattr__(self, name, value):
            if isinstance(value, nn.Identity): raise RuntimeError('no replacing here')
            super().__setattr__(name, value)
    m = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), Stubborn(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))).train()
    randomize_bn(m)
    snap = snapshot(m)
    with pytest.raises(RuntimeError, match='no replacing'): BN_Folder().fold(m, inplace=True)
    assert_same(m, snap)
    assert isinstance(m[1], nn.BatchNorm2d) and m.training and m[2][1].training

def test_untraceable_top_level_with_a_branch_on_values():
    class Loop(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
            self.bn = nn.BatchNorm2d(4)
        def forward(self, x):
            y = self.stem(x)
            if y.sum() > 0: y = y * 2          # data-dependent control flow: fx can't trace this, and no shape can key it
            return self.bn(y)
    for example in (False, True):   # the code of forward only calls `stem`: every path uses `stem.1` through `stem`'s graph
        _, report = assert_folded(Loop(), x4, bns='stem.1', into='stem.0', example=example)
        assert not report['bn'].folded and '' in report.untraceable, report

def test_child_layer_also_called_by_untraceable_parent_is_not_folded():
    class Sneaky(nn.Module):
        def __init__(self):
            super().__init__(); self.block = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
        def forward(self, x):
            if x.sum() > 0: x = x + 1
            return self.block(x) + self.block[0](x)   # the conv is also used outside its block
    assert_refused(Sneaky(), x4, bn='block.1', kind=('outside-use', 'read', 'reused', 'path'))   # 'path': the parent branches on values

def test_deep_chain_has_no_recursion_limit():
    layers = [nn.Flatten()]
    for _ in range(1200): layers += [nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU()]
    f = BN_Folder(); f.fold(nn.Sequential(*layers).eval())
    assert f.report.n_folded == 1200

def test_wrappers_are_looked_through():
    inner = randomize_bn(nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))).eval()
    folded = BN_Folder().fold(nn.DataParallel(inner))
    assert isinstance(folded, nn.Sequential) and isinstance(folded[1], nn.Identity) and isinstance(inner[1], nn.BatchNorm2d)
    torch.testing.assert_close(folded(x4), inner(x4), rtol=1e-5, atol=1e-5)

def test_forward_that_inspects_a_batchnorm_cancels_only_that_fold():
    class Peeks(nn.Module):   # forward inspects one BatchNorm's class: traced again once folded, it is another graph
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.c2, self.b2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        def forward(self, x):
            y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
            return y * 2 if isinstance(self.b2, nn.BatchNorm2d) else y
    for example in (False, True):   # the planner sees it without example_inputs, and without the check
        _, report = fold_and_check(Peeks(), x4, example=example, check=False)
        assert report['b1'].folded and not report['b2'].folded and report['b2'].kind == 'inspected', report
    randomize_bn(m := Peeks()).eval(); want = m(x4)
    f = BN_Folder(); out = f.fold(m, inplace=True, example_inputs=x4)   # in place too: the replay undoes the fold on the model itself
    assert out is m and f.report['b1'].folded and f.report['b2'].kind == 'inspected', f.report
    torch.testing.assert_close(out(x4), want, rtol=1e-5, atol=1e-5)

@pytest.mark.parametrize('dtype', [torch.float64, torch.float32, torch.bfloat16])
def test_every_dtype_leaves_the_original_untouched(dtype):
    m = nn.Sequential(nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.BatchNorm2d(5), nn.Conv2d(5, 3, 1)).to(dtype)
    assert_folded(m, x4.to(dtype), into={'1': '0', '3': '4'})   # bfloat16: conftest.low_precision_bound

@pytest.mark.parametrize('inplace', [False, True])
def test_check_keeps_folds_that_rounding_explains(monkeypatch, inplace):
    "A difference above float32 output rounding but within the rounding noise keeps every fold: the planned weights go back in."
    import fasterbn.check as check
    monkeypatch.setattr(check.Reference, 'below_output_rounding', lambda self, err: False)   # every root is suspect
    m = randomize_bn(nn.Sequential(nn.Conv2d(4, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.BatchNorm2d(6), nn.Conv2d(6, 3, 1))).eval()
    want = m(x4)
    f = BN_Folder(); out = f.fold(m, inplace=inplace, example_inputs=x4)
    assert f.report.n_folded == 2 and (out is m) == inplace, f.report
    torch.testing.assert_close(out(x4), want, rtol=1e-5, atol=1e-5)
