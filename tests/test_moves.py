"""The new exact folds of the table of moves, each against a float64 reference with random statistics, and each refused when not exact:
identity branches into a sibling conv, BatchNorm -> BatchNorm, pooling, one BatchNorm read by several layers, timm's layers, tokens."""
import pytest, torch, torch.nn as nn, torch.nn.functional as F
from fasterbn.folder import BN_Folder, randomize_bn
from conftest import fold_and_check, assert_folded, assert_refused

torch.manual_seed(0)
x4 = torch.randn(2, 4, 9, 9)

def init_(m, std=.5):
    "Random conv/linear weights, so a wrong fold can't hide behind a symmetric init."
    for p in m.modules():
        if isinstance(p, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.ConvTranspose2d)): nn.init.normal_(p.weight, std=std)
    return m

# ---- identity branch: bn(x) + conv(x) ------------------------------------------------------------------
class RepBlock(nn.Module):
    "RepVGG/MobileOne: a kxk conv with its BatchNorm, a 1x1 conv with its BatchNorm, and a BatchNorm-only identity branch."
    def __init__(self, c=4, k=3, groups=1, dilation=1, sub=False, conv_bn=True):
        super().__init__()
        self.kxk = nn.Conv2d(c, c, k, padding=dilation * (k // 2), dilation=dilation, groups=groups, bias=False)
        self.bn_kxk = nn.BatchNorm2d(c) if conv_bn else nn.Identity()
        self.one = nn.Conv2d(c, c, 1, groups=groups)
        self.identity, self.sub = nn.BatchNorm2d(c), sub
    def forward(self, x):
        y = self.bn_kxk(self.kxk(x)) + self.one(x)
        return torch.relu(y - self.identity(x) if self.sub else y + self.identity(x))

@pytest.mark.parametrize('kw', [dict(), dict(groups=2), dict(groups=4), dict(k=5, dilation=2), dict(k=1), dict(sub=True),
                                dict(conv_bn=False)],
                         ids=lambda kw: ','.join(f'{k}={v}' for k, v in kw.items()) or 'plain')
def test_identity_branch_folds_into_a_sibling_conv(kw):
    folded, report = fold_and_check(init_(RepBlock(**kw)), x4, example=False)
    assert report['identity'].folded and report['identity'].direction == 'branch', report
    assert report.n_folded == len(report)
    assert type(folded.identity) is nn.Threshold   # zeros in its place: its map now lives in the sibling conv

class Beside(nn.Module):
    "conv(x) + bn(x), with any sibling layer (the model must run: its output may broadcast over the BatchNorm's)."
    def __init__(self, conv, c=4): super().__init__(); self.conv, self.bn = conv, nn.BatchNorm2d(c)
    def forward(self, x): return self.conv(x) + self.bn(x)

# Each of these models runs, and none has a tap of the sibling that reads exactly the pixel of the output: the identity branch
# cannot go into it. (padding=(1, 0) or padding=2 alone would make shapes that do not add at all: no model to fold.)
NOT_CENTRED = {
    'strided': (lambda: nn.Conv2d(4, 4, 3, stride=2, padding=1), (2, 4, 2, 2)),             # a 1x1 output broadcast over 2x2
    'strided_same_size_at_w1': (lambda: nn.Conv2d(4, 4, (1, 3), stride=(1, 2), padding=(0, 1)), (2, 4, 5, 1)),  # W=2 broadcasts
    'off_centre_even_dilated': (lambda: nn.Conv2d(4, 4, 2, dilation=2, padding=1), (2, 4, 9, 9)),   # taps read x[i-1], x[i+1]
    'valid_whole_input': (lambda: nn.Conv2d(4, 4, 9), (2, 4, 9, 9)),                           # padding='valid': 1x1, broadcast
    'valid_keyword': (lambda: nn.Conv2d(4, 4, 3, padding='valid'), (2, 4, 3, 3)),
}

@pytest.mark.parametrize('example', [False, True], ids=['no_example', 'example'])
@pytest.mark.parametrize('case', list(NOT_CENTRED))
def test_identity_branch_refused_when_the_sibling_is_strided_or_off_centre(case, example):
    "Refused by the planner itself (check off). Its kind should be 'branch' (issue 14 defect 7, test_issue14.py); today 'shared-output'."
    conv, shape = NOT_CENTRED[case]
    m, x = init_(Beside(conv())), torch.randn(shape)
    m.eval()(x)   # the model runs
    assert_refused(m, x, bn='bn', kind=('branch', 'shared-output'), example=example)

def test_identity_branch_with_circular_padding_folds():
    "Circular padding: the centre tap still reads the pixel itself."
    m = init_(Beside(nn.Conv2d(4, 4, 3, padding=1, padding_mode='circular', bias=False)))
    assert_folded(m, x4, into='conv', direction='branch', example=False)

def test_identity_branch_needs_the_same_input():
    class Other(nn.Module):
        def __init__(self): super().__init__(); self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        def forward(self, x): return self.conv(torch.relu(x)) + self.bn(x)
    assert_refused(init_(Other()), x4, bn='bn', kind=('branch', 'shared-output'), example=False)

def test_identity_branch_with_the_timm_repvgg_block():
    timm = pytest.importorskip('timm')
    from timm.models.byobnet import RepVggBlock
    m = init_(RepVggBlock(8, 8, kernel_size=3, stride=1))
    folded, report = fold_and_check(m, torch.randn(2, 8, 7, 7), example=False)
    assert report.n_folded == len(report) == 3, report

# ---- BatchNorm -> BatchNorm ------------------------------------------------------------------------------
def test_bn_bn_after_a_conv_both_fold_into_it():
    m = init_(nn.Sequential(nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5), nn.Dropout(), nn.BatchNorm2d(5), nn.ReLU()))
    folded, report = fold_and_check(m, x4, example=False)
    assert report.n_folded == 2 and report['3'].into == '0', report

def test_bn_bn_with_nothing_to_fold_into_merges_into_the_first():
    m = nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4, affine=False), nn.BatchNorm2d(4), nn.ReLU())
    folded, report = fold_and_check(m, x4, example=False)
    assert not report['1'].folded and report['2'].folded and report['2'].into == '1', report
    assert isinstance(folded[1], nn.BatchNorm2d) and folded[1].affine and isinstance(folded[2], nn.Identity)

def test_bn_bn_chain_of_three_folds_backward():
    m = init_(nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4), nn.BatchNorm2d(4), nn.BatchNorm2d(4), nn.Conv2d(4, 3, 1)))
    _, report = fold_and_check(m, x4, example=False)
    assert report.n_folded == 3 and report['1'].direction == 'backward', report

# ---- padding between the layer and the BatchNorm --------------------------------------------------------
class Padded(nn.Module):
    "conv -> pad -> BN (forward) or BN -> pad -> conv (backward), the pad as a module or as F.pad."
    def __init__(self, pad, forward=True):
        super().__init__(); self.pad, self.fwd = pad, forward
        self.conv, self.bn = (nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5)) if forward else (nn.Conv2d(4, 5, 3), nn.BatchNorm2d(4))
    def forward(self, x):
        pad = self.pad if isinstance(self.pad, nn.Module) else (lambda y: F.pad(y, *self.pad))
        if self.fwd: return self.bn(pad(self.conv(x)))
        return self.conv(pad(self.bn(torch.relu(x))))

COPYING_PADS = {'reflect': nn.ReflectionPad2d(1), 'replicate': nn.ReplicationPad2d((1, 2, 0, 1)), 'circular': nn.CircularPad2d(1),
                'F.pad_reflect': ((1, 1, 1, 1), 'reflect'), 'F.pad_replicate': ((2, 0, 0, 1), 'replicate')}
CONSTANT_PADS = {'zero': nn.ZeroPad2d(1), 'constant': nn.ConstantPad2d(1, 0.5), 'F.pad_zeros': ((1, 1, 1, 1),),
                 'F.pad_value': ((1, 1), 'constant', -1.)}

@pytest.mark.parametrize('forward', [True, False], ids=['forward', 'backward'])
@pytest.mark.parametrize('pad', list(COPYING_PADS))
def test_padding_that_copies_values_commutes(pad, forward):
    "Reflect, replicate and circular padding copy values within a channel: the BatchNorm's map crosses them, both ways."
    assert_folded(init_(Padded(COPYING_PADS[pad], forward)), x4, into='conv', direction='forward' if forward else 'backward',
                  example=False)

@pytest.mark.parametrize('forward', [True, False], ids=['forward', 'backward'])
@pytest.mark.parametrize('pad', list(CONSTANT_PADS))
def test_constant_padding_needs_a_map_that_fixes_the_constant(pad, forward):
    "A constant border would become s * value + t: refused (randomize_bn gives every channel a shift), with the kind 'padding'."
    assert_refused(init_(Padded(CONSTANT_PADS[pad], forward)), x4, bn='bn', kind='padding', example=False)

def test_zero_padding_with_a_zero_shift_folds():
    "The map fixes 0 where the shift is 0 (mean 0, beta 0): zero padding then commutes with it."
    m = init_(Padded(nn.ZeroPad2d(1)))
    randomize_bn(m); m.bn.running_mean.zero_(); m.bn.bias.data.zero_()
    assert_folded(m, x4, into='conv', randomize=False, example=False)

def test_padding_the_channel_axis_is_refused():
    "F.pad with 6 values on a 4-D tensor pads the channels too: refused (the padded channels are not the BatchNorm's)."
    class PadChannels(nn.Module):
        def __init__(self): super().__init__(); self.conv, self.bn = nn.Conv2d(4, 5, 3), nn.BatchNorm2d(7)
        def forward(self, x): return self.bn(F.pad(self.conv(x), (0, 0, 0, 0, 1, 1), mode='constant'))
    assert_refused(init_(PadChannels()), x4, bn='bn', kind=('rank', 'padding', 'channels'), example=False)

# ---- pooling ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize('pool', [nn.AvgPool2d(2), nn.AvgPool2d(3, 2, padding=1, count_include_pad=False), nn.AdaptiveAvgPool2d(2),
                                  nn.MaxPool2d(3, 2, padding=1), nn.AdaptiveMaxPool2d(3)], ids=repr)
def test_forward_and_backward_through_pooling(pool):
    fwd = init_(nn.Sequential(nn.Conv2d(4, 5, 3), pool, nn.BatchNorm2d(5), nn.ReLU()))
    bwd = init_(nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4), pool, nn.Conv2d(4, 5, 1)))
    for m, seed in ((fwd, 0), (bwd, 1)):
        for s in range(3):   # several seeds: randomize_bn gives some negative scales, which max pooling must refuse
            _, report = fold_and_check(m, x4, example=False, seed=s)
            bn = next(r for r in report.rows)
            neg = bool((m[2 if m is fwd else 1].weight < 0).any())
            if isinstance(pool, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)) and neg: assert not bn.folded and bn.kind == 'sign', report
            else: assert bn.folded and 'pool' in bn.via, report

def test_avg_pool_with_zero_padding_needs_a_zero_shift():
    m = init_(nn.Sequential(nn.Conv2d(4, 5, 3), nn.AvgPool2d(3, 1, padding=1), nn.BatchNorm2d(5), nn.ReLU()))
    _, report = fold_and_check(m, x4, example=False)
    assert not report['2'].folded and report['2'].kind == 'padding'

def test_global_mean_into_a_linear_head():
    class Head(nn.Module):
        def __init__(self): super().__init__(); self.bn, self.fc = nn.BatchNorm2d(4), nn.Linear(4, 3)
        def forward(self, x): return self.fc(self.bn(torch.relu(x)).mean((2, 3)))
    _, report = fold_and_check(init_(Head()), x4, example=False)
    assert report['bn'].folded and report['bn'].direction == 'backward'

# ---- one BatchNorm read by several layers ----------------------------------------------------------------
class Inception(nn.Module):
    def __init__(self, pad=0):
        super().__init__()
        self.bn, self.a, self.b, self.c = nn.BatchNorm2d(4), nn.Conv2d(4, 3, 1), nn.Conv2d(4, 2, 3, padding=pad), nn.Conv2d(4, 2, 1)
    def forward(self, x):
        y = self.bn(torch.relu(x))
        return self.a(y), self.b(y), self.c(y)

def test_one_bn_read_by_several_convs_folds_into_all():
    _, report = fold_and_check(init_(Inception()), x4, example=False)
    assert report['bn'].folded and report['bn'].into == 'a, b, c', report

def test_one_bn_read_by_several_convs_all_or_nothing():
    _, report = fold_and_check(init_(Inception(pad=1)), x4, example=False)
    assert not report['bn'].folded and report['bn'].kind == 'padding', report

# ---- timm's layers ---------------------------------------------------------------------------------------
def test_timm_batchnormact_without_act_folds_backward():
    timm = pytest.importorskip('timm')
    from timm.layers import BatchNormAct2d
    m = init_(nn.Sequential(nn.ReLU(), BatchNormAct2d(4, act_layer=None), nn.Conv2d(4, 5, 1)))
    folded, report = fold_and_check(m, x4, example=False)
    assert report['1'].folded and report['1'].direction == 'backward' and isinstance(folded[1], nn.Identity)

def test_timm_conv2d_same():
    timm = pytest.importorskip('timm')
    from timm.layers import Conv2dSame
    fwd = init_(nn.Sequential(Conv2dSame(4, 5, 3, stride=2), nn.BatchNorm2d(5), nn.ReLU()))
    _, report = fold_and_check(fwd, x4, example=False)
    assert report['1'].folded
    for k, ok in ((3, False), (1, True)):   # its run-time zero padding takes a backward fold only when a 1x1 kernel needs none
        bwd = init_(nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4), Conv2dSame(4, 5, k, stride=2)))
        _, report = fold_and_check(bwd, x4, example=False)
        assert report['1'].folded == ok and (ok or report['1'].kind == 'padding'), report

def test_timm_frozen_batchnormact_is_folded_and_reported():
    timm = pytest.importorskip('timm')
    from timm.layers import FrozenBatchNormAct2d
    m = nn.Sequential(nn.Conv2d(4, 5, 3), FrozenBatchNormAct2d(5))
    # it broadcasts (1, C, 1, 1): a map on dim 1 only on 4-D input, which the graph can't prove here: folded, and the folded model checks it
    folded, report = fold_and_check(init_(m), x4, example=False)
    assert len(report) == 1 and report['1'].folded and '4-D' in report['1'].rests_on, report
    with pytest.raises(Exception, match='fasterbn folded'): folded(x4[0])   # unbatched: the unfolded model broadcasts to another shape
    folded, report = fold_and_check(init_(m), x4)
    assert report['1'].folded and type(folded[1]) is nn.ReLU, report

# ---- tokens: BatchNorm1d on the features of a Linear that reads (N, L, C) ---------------------------------
class Tokens(nn.Module):
    def __init__(self, how): super().__init__(); self.fc, self.bn, self.how = nn.Linear(6, 5), nn.BatchNorm1d(5), how
    def forward(self, x):
        y = self.fc(x.flatten(2).transpose(1, 2))   # (N, L, C): a 3-D Linear output
        if self.how == 'transpose': return self.bn(y.transpose(1, 2)).transpose(1, 2)
        return self.bn(y.flatten(0, 1)).reshape_as(y)   # LeViT

@pytest.mark.parametrize('how', ['transpose', 'flatten'])
def test_token_batchnorm_after_linear(how):
    x = torch.randn(2, 6, 3, 3)
    _, report = fold_and_check(init_(Tokens(how)), x, example=False)
    assert report['bn'].folded and report['bn'].into == 'fc', report
