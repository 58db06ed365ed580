"""Property-based test: random small networks, folded, must match a float64 reference on every example.

A net is a chain of blocks. Each block kind has one small strategy that reads the current tensor shape and builds a
module for it; the block's forward *is* the pattern (a `cat`, a broadcasting `add`, an identity branch...). Shapes are
checked by running each new block once, so every generated net runs. Besides the classic conv/BN/cat/add/flatten-head
nets, the grammar makes:
  - rank-changing ops (Unflatten, Embedding, view/reshape with explicit and inferred sizes, transpose/permute), Linear on
    3-D tokens followed by BatchNorm1d, convs applied to unbatched tensors;
  - 1-channel BatchNorms inside `cat`, broadcasting `add`s (size-1 dims, lower-rank operands);
  - parents planned apart from their child (untraceable forward, or hooked child) that reuse the child's layers;
  - the patterns a planner may learn to fold: identity branches (RepVGG/MobileOne), pooling between a conv and a BN,
    BN -> BN chains, one BN read by several layers, timm's BatchNormAct2d/Conv2dSame, BatchNorm1d over tokens.
Only exactness (or an untouched, refused BN) is asserted, so every example is valid whatever the planner folds.

`make test` runs the 'ci' profile (300 examples). For thousands:
    HYPOTHESIS_PROFILE=thorough HYPOTHESIS_EXAMPLES=5000 .venv/bin/python -m pytest tests/test_property.py
"""
import os, pytest, torch, torch.nn as nn
from torch.nn.modules.conv import _ConvNd
from hypothesis import given, settings, strategies as st, HealthCheck, event, assume
from conftest import fold_and_check

settings.register_profile('ci', max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
settings.register_profile('thorough', max_examples=int(os.environ.get('HYPOTHESIS_EXAMPLES', 5000)), deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'ci'))

def _divisors(n): return [g for g in range(1, n + 1) if n % g == 0]
def _observe(module, args, out): return None   # a forward hook that changes nothing, but makes its module opaque to the trace

# ---- blocks: small modules whose forward is the pattern ----------------------------------------------
class Op(nn.Module):
    "A layout or rank-changing tensor op, by name: flatten, view, reshape, transpose, permute, a slice."
    def __init__(self, op, *args): super().__init__(); self.op, self.args = op, args
    def extra_repr(self): return f'{self.op}{self.args}'
    def forward(self, x):
        op, a = self.op, self.args
        if op == 'flatten': return torch.flatten(x, 1)
        if op == 'flatten_view': return x.view(x.size(0), -1)
        if op == 'view': return x.view(*a)                              # explicit sizes
        if op == 'reshape_inferred': return x.reshape(x.shape[0], *a)   # `a` holds a -1
        if op == 'torch_reshape': return torch.reshape(x, a)            # batch inferred: (-1, ...)
        if op == 'transpose': return x.transpose(*a)
        if op == 'permute': return x.permute(*a)
        if op == 'slice': return x[:, a[0]:a[1]]
        raise ValueError(op)

class Cat(nn.Module):
    "torch.cat of pieces along dim 1, written `1`, as the negative dim, or `axis=1`."
    def __init__(self, pieces, style, rank): super().__init__(); self.pieces, self.style, self.rank = nn.ModuleList(pieces), style, rank
    def extra_repr(self): return f'style={self.style}'
    def forward(self, x):
        ys = [p(x) for p in self.pieces]
        if self.style == 'neg': return torch.cat(ys, dim=1 - self.rank)
        if self.style == 'axis': return torch.cat(ys, axis=1)
        return torch.cat(ys, 1)

class Add(nn.Module):
    "a(x) + b(...): b reads x ('same'), nothing ('skip': + x), the (H, W) mean plane ('plane'), or one sample ('sample')."
    def __init__(self, a, b, how): super().__init__(); self.a, self.b, self.how = a, b, how
    def extra_repr(self): return f'how={self.how}'
    def forward(self, x):
        y = self.a(x)
        if self.how == 'skip': return y + x
        if self.how == 'plane': return y + self.b(x.mean((0, 1)))   # a 2-D Linear output broadcast over (N, C)
        if self.how == 'sample': return y + self.b(x[0])            # an unbatched output broadcast over the batch
        return y + self.b(x)

class IdentityBranch(nn.Module):
    "RepVGG/MobileOne: bn(x) + conv(x) [+ conv2(x)], or conv(x) - bn(x)."
    def __init__(self, bn, conv, conv2=None, sub=False): super().__init__(); self.bn, self.conv, self.conv2, self.sub = bn, conv, conv2, sub
    def extra_repr(self): return f'sub={self.sub}'
    def forward(self, x):
        if self.sub: return self.conv(x) - self.bn(x)
        y = self.bn(x) + self.conv(x)
        return y + self.conv2(x) if self.conv2 is not None else y

class Fanout(nn.Module):
    "One BatchNorm read by several layers, joined by add or cat."
    def __init__(self, bn, layers, cat): super().__init__(); self.bn, self.layers, self.cat = bn, nn.ModuleList(layers), cat
    def extra_repr(self): return f'cat={self.cat}'
    def forward(self, x):
        y = self.bn(x)
        outs = [l(y) for l in self.layers]
        return torch.cat(outs, 1) if self.cat else outs[0] + outs[1]

class TokenBN(nn.Module):
    "BatchNorm1d over a Linear's features on tokens (N, L, F): via transpose(1, 2), or flatten(0, 1) ... reshape_as."
    def __init__(self, fc, bn, how): super().__init__(); self.fc, self.bn, self.how = fc, bn, how
    def extra_repr(self): return f'how={self.how}'
    def forward(self, x):
        y = self.fc(x)
        if self.how == 'transpose': return self.bn(y.transpose(1, 2)).transpose(1, 2)
        return self.bn(y.flatten(0, 1)).reshape_as(y)

class LayerBN(nn.Module):
    def __init__(self, layer, bn): super().__init__(); self.layer, self.bn = layer, bn
    def forward(self, x): return self.bn(self.layer(x))

class Parent(nn.Module):
    "Holds a LayerBN planned alone (own forward untraceable, or the child hooked), and may reuse the child's layers."
    def __init__(self, block, untraceable, reuse):
        super().__init__(); self.block, self.untraceable, self.reuse = block, untraceable, reuse
        if not untraceable: block.register_forward_hook(_observe)
    def extra_repr(self): return f'untraceable={self.untraceable}, reuse={self.reuse}'
    def forward(self, x):
        if self.untraceable and bool(torch.isnan(x).any()): x = torch.nan_to_num(x)   # data-dependent: fx fails here
        y = self.block(x)
        if self.reuse == 'call_layer': y = y + self.block.layer(x)
        elif self.reuse == 'call_bn': y = y + self.block.bn(y)
        elif self.reuse == 'read_weight': y = y + self.block.layer.weight.mean()
        return y

class Net(nn.Module):
    "The chain of blocks (fx traces the loop)."
    def __init__(self, blocks, kinds): super().__init__(); self.blocks, self.kinds = nn.ModuleList(blocks), kinds
    def forward(self, x):
        for b in self.blocks: x = b(x)
        return x

# ---- building helpers -------------------------------------------------------------------------------
def bn_for(shape, **kw):
    "The BatchNorm whose input rank matches `shape` (it normalizes dim 1, whatever that is)."
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[len(shape)]
    return cls(shape[1], **kw)

def conv_cls(d, transposed=False): return getattr(nn, f'Conv{"Transpose" if transposed else ""}{d}d')
def pool_cls(kind, d): return getattr(nn, f'{kind}{d}d')

@st.composite
def channel_layer(draw, shape, out, kind=None):
    "A layer producing `out` channels and keeping every other size: a conv (k 1, or 3 'same') on dim 1, or a Linear on the last dim."
    kind = kind or draw(st.sampled_from(['conv', 'conv', 'linear'] if 3 <= len(shape) <= 5 else ['linear']))
    if kind == 'linear': return nn.Linear(shape[-1], out, bias=draw(st.booleans()))
    k = draw(st.sampled_from([1, 3]))
    mode = draw(st.sampled_from(['zeros', 'reflect', 'replicate', 'circular'])) if k == 3 and min(shape[2:]) > 1 else 'zeros'
    return conv_cls(len(shape) - 2)(shape[1], out, k, padding=k // 2, padding_mode=mode, bias=draw(st.booleans()))

def _keep_shape_layer(draw, shape):
    "A layer whose output has the shape of its input (for a skip connection)."
    if len(shape) >= 3 and draw(st.booleans()): return conv_cls(len(shape) - 2)(shape[1], shape[1], 1)
    return nn.Linear(shape[-1], shape[-1])

def _out_shape(block, shape):
    "Shape `block` outputs for an input of `shape`; None if it can't run or makes a tensor too big or empty."
    try:
        with torch.no_grad(): y = block.eval()(torch.zeros(shape))
    except Exception: return None
    ok = isinstance(y, torch.Tensor) and 1 <= y.dim() <= 5 and 0 < y.numel() <= 4096 and max(y.shape) <= 64
    return tuple(y.shape) if ok else None

# ---- one strategy per block kind: each takes the current shape and returns a module -------------------
@st.composite
def conv_block(draw, shape):
    "A Conv or ConvTranspose of the dimensionality that fits, batched (channels on dim 1) or unbatched (channels on dim 0)."
    r = len(shape)
    batched = r == 5 or (r in (3, 4) and draw(st.sampled_from([True, True, False])))
    d = r - 2 if batched else r - 1
    c_in, size = shape[1 if batched else 0], min(shape[-d:])
    transposed = draw(st.booleans()) and size <= 6 and d <= 2
    c_out = draw(st.integers(1, 6))
    g = draw(st.sampled_from([q for q in _divisors(c_in) if c_out % q == 0]))
    k, stride, bias = draw(st.integers(1, 3)), draw(st.sampled_from([1, 2])), draw(st.booleans())
    if transposed: return conv_cls(d, True)(c_in, c_out, k, stride=stride, groups=g, bias=bias)
    pad = draw(st.integers(0, min(1, size - 1)))
    mode = draw(st.sampled_from(['zeros', 'reflect', 'replicate', 'circular'])) if pad else 'zeros'
    dil = draw(st.sampled_from([1, 1, 2])) if size + 2 * pad >= 2 * k else 1
    if size + 2 * pad < dil * (k - 1) + 1: k = 1
    return conv_cls(d)(c_in, c_out, k, stride=stride, padding=pad, padding_mode=mode, groups=g, bias=bias, dilation=dil)

@st.composite
def bn_block(draw, shape): return bn_for(shape, affine=draw(st.booleans()))

@st.composite
def linear_block(draw, shape): return nn.Linear(shape[-1], draw(st.integers(1, 6)), bias=draw(st.booleans()))

@st.composite
def act_block(draw, shape): return draw(st.sampled_from([nn.ReLU(), nn.Identity(), nn.Dropout(.3)]))

@st.composite
def reshape_block(draw, shape):
    """Rank-changing and layout ops: flatten, unflatten (also after a no-op `flatten(1)` that "proves" 2-D, as in the issue),
    view/reshape with explicit or inferred sizes, transpose, permute; half the time followed by a Linear on the new last dim."""
    r, n = len(shape), shape[0]
    ops = []
    if r >= 3: ops += [nn.Flatten(), Op('flatten'), Op('flatten_view'), Op('transpose', 1, 2), Op('transpose', 1, r - 1),
                       Op('permute', 0, *range(2, r), 1)]
    if r == 4: ops += [Op('permute', 0, 1, 3, 2), Op('view', n, shape[1], -1)]
    if r in (2, 3):
        f = shape[-1]; a = draw(st.sampled_from([q for q in _divisors(f) if q < f] or [1]))
        lead = shape[1:-1]
        ops += [nn.Unflatten(r - 1, (a, f // a)), Op('view', n, *lead, a, f // a), Op('reshape_inferred', *lead, a, -1),
                Op('torch_reshape', (-1, *lead, a, f // a))]
        if r == 2: ops += [nn.Sequential(Op('flatten'), nn.Unflatten(1, (a, f // a)))]
    op = draw(st.sampled_from(ops))
    if draw(st.booleans()) and (new := _out_shape(op, shape)) is not None:
        return nn.Sequential(op, nn.Linear(new[-1], draw(st.integers(1, 6))))   # then a BatchNorm1d may follow: the rank trap
    return op

@st.composite
def cat_block(draw, shape):
    "A cat along dim 1 of 2-3 pieces (layers, BatchNorms of slices, 1-channel ones first of all, raw slices), maybe read by a layer."
    r, c = len(shape), shape[1]
    pieces = []
    for _ in range(draw(st.integers(2, 3))):
        kind = draw(st.sampled_from(['layer', 'bn_layer', 'bn_slice', 'bn_slice', 'slice']))
        k = draw(st.sampled_from([1, 1, 2, 3]))
        if kind in ('layer', 'bn_layer'):
            layer = draw(channel_layer(shape, k, kind='conv' if r >= 3 else 'linear'))
            pieces.append(layer if kind == 'layer' else nn.Sequential(layer, bn_for((shape[0], k, *shape[2:]))))
        else:
            k = min(k, c); start = draw(st.integers(0, c - k))
            sl = Op('slice', start, start + k)
            pieces.append(sl if kind == 'slice' else nn.Sequential(sl, bn_for((shape[0], k, *shape[2:]))))
    cat = Cat(pieces, draw(st.sampled_from(['pos', 'neg', 'axis'])), r)
    if not draw(st.booleans()): return cat
    cat_shape = _out_shape(cat, shape)
    if cat_shape is None: return cat
    return nn.Sequential(cat, draw(channel_layer(cat_shape, draw(st.integers(1, 5)))))   # a Linear on 3-D: the trap

@st.composite
def add_block(draw, shape):
    "a(x) + b(...): same shapes, a skip, or b broadcasting (size-1 spatial dims, an (H, W) plane, one unbatched sample)."
    r = len(shape)
    how = draw(st.sampled_from(['same', 'same', 'skip'] + (['pooled', 'sample'] if r in (3, 4) else []) + (['plane'] if r == 4 else [])))
    if how == 'skip': return Add(_keep_shape_layer(draw, shape), None, 'skip')
    if how == 'plane':   # the bn(conv(x) + fc(p.view(3, 5))): out channels == W, so the channel counts agree
        return Add(nn.Conv2d(shape[1], shape[-1], 1), nn.Linear(shape[-1], shape[-1]), 'plane')
    out, d = draw(st.integers(1, 5)), r - 2
    kind = 'conv' if how == 'pooled' else draw(st.sampled_from(['conv', 'conv', 'linear'] if r >= 3 else ['linear']))
    a = draw(channel_layer(shape, out, kind=kind))
    if how == 'same': return Add(a, draw(channel_layer(shape, out, kind=kind)), 'same')
    if how == 'pooled':   # b's output has size-1 spatial dims
        return Add(a, nn.Sequential(pool_cls('AdaptiveAvgPool', d)(1), conv_cls(d)(shape[1], out, 1)), 'same')
    # 'sample': b reads x[0] (unbatched), its output broadcasts over the batch
    return Add(a, conv_cls(d)(shape[1], out, 1) if kind == 'conv' else nn.Linear(shape[-1], out), 'sample')

@st.composite
def identity_branch_block(draw, shape):
    "bn(x) + conv(x) [+ conv2(x)] or conv(x) - bn(x), convs keeping the size: groups, depthwise, dilation, kernel 1/3/5, 'same'."
    c, d, size = shape[1], len(shape) - 2, min(shape[2:])
    def conv():
        k = draw(st.sampled_from([1, 3, 5])); dil = draw(st.sampled_from([1, 2])) if k > 1 else 1
        g = draw(st.sampled_from(_divisors(c)))   # includes depthwise (g == c)
        pad = 'same' if draw(st.booleans()) else (k // 2) * dil
        mode = draw(st.sampled_from(['zeros', 'reflect'])) if pad != 'same' and 0 < pad < size else 'zeros'
        m = conv_cls(d)(c, c, k, padding=pad, padding_mode=mode, dilation=dil, groups=g, bias=draw(st.booleans()))
        return nn.Sequential(m, bn_for(shape)) if draw(st.booleans()) else m   # the conv branch may have its own BatchNorm
    sub = draw(st.booleans())
    return IdentityBranch(bn_for(shape), conv(), None if sub or draw(st.booleans()) else conv(), sub)

@st.composite
def pool_between_block(draw, shape):
    "conv -> pool -> BN, or BN -> pool -> conv, with average (padding, count_include_pad), adaptive or max pooling."
    c, d = shape[1], len(shape) - 2
    kind = draw(st.sampled_from(['AvgPool', 'AvgPool', 'AdaptiveAvgPool', 'MaxPool']))
    if kind == 'AdaptiveAvgPool': pool = pool_cls(kind, d)(draw(st.sampled_from([1, 2, 3])))
    else:
        k = draw(st.sampled_from([2, 3])); stride = draw(st.sampled_from([1, 2])); pad = draw(st.integers(0, k // 2))
        pool = (pool_cls(kind, d)(k, stride, pad, count_include_pad=draw(st.booleans())) if kind == 'AvgPool'
                else pool_cls(kind, d)(k, stride, pad))
    if draw(st.booleans()):   # conv -> pool -> BN
        out = draw(st.integers(1, 5))
        return nn.Sequential(draw(channel_layer(shape, out, kind='conv')), pool, bn_for((shape[0], out, *shape[2:])))
    out = draw(st.integers(1, 5)); k = draw(st.sampled_from([1, 1, 3]))
    mode = draw(st.sampled_from(['zeros', 'replicate']))
    return nn.Sequential(bn_for(shape), pool, conv_cls(d)(c, out, k, padding=draw(st.integers(0, k // 2)), padding_mode=mode))

@st.composite
def bn_chain_block(draw, shape):
    "BN -> BN, maybe after or before a layer."
    where = draw(st.sampled_from(['alone', 'after', 'before']))
    if where == 'alone': return nn.Sequential(bn_for(shape), bn_for(shape))
    layer = _keep_shape_layer(draw, shape)
    return nn.Sequential(layer, bn_for(shape), bn_for(shape)) if where == 'after' else nn.Sequential(bn_for(shape), bn_for(shape), layer)

@st.composite
def fanout_block(draw, shape):
    "One BatchNorm read by two layers, joined by add (same out) or cat."
    cat = draw(st.booleans()); out = draw(st.integers(1, 4))
    kind = 'conv' if len(shape) >= 3 else 'linear'
    return Fanout(bn_for(shape), [draw(channel_layer(shape, out, kind=kind)),
                                  draw(channel_layer(shape, draw(st.integers(1, 4)) if cat else out, kind=kind))], cat)

@st.composite
def timm_block(draw, shape):
    "timm: Conv2dSame or Conv2d, then BatchNormAct2d with no activation (None/Identity) or a ReLU; or the BN first."
    from timm.layers import BatchNormAct2d, Conv2dSame
    act = draw(st.sampled_from([None, nn.Identity, nn.ReLU]))
    out, k, stride = draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.sampled_from([1, 2]))
    conv = (Conv2dSame if draw(st.booleans()) else nn.Conv2d)(shape[1], out, k, stride=stride)
    if draw(st.booleans()): return nn.Sequential(conv, BatchNormAct2d(out, act_layer=act))
    return nn.Sequential(BatchNormAct2d(shape[1], act_layer=act), conv)

@st.composite
def token_bn_block(draw, shape):
    "Linear on tokens (N, L, F), then BatchNorm1d over its features via transpose(1, 2) or flatten(0, 1) ... reshape_as."
    out = draw(st.integers(1, 6))
    return TokenBN(nn.Linear(shape[-1], out), nn.BatchNorm1d(out), draw(st.sampled_from(['transpose', 'flatten'])))

@st.composite
def parent_block(draw, shape):
    "A layer + BN child inside a parent that is untraceable or hooks the child, and may call or read the child's layers."
    layer = draw(channel_layer(shape, draw(st.integers(1, 5))))
    out_shape = _out_shape(layer, shape)
    if out_shape is None or len(out_shape) < 2: return layer
    reuse = draw(st.sampled_from([None, 'call_layer', 'call_bn', 'read_weight']))
    return Parent(LayerBN(layer, bn_for(out_shape)), draw(st.booleans()), reuse)

BLOCKS = {'conv': conv_block, 'bn': bn_block, 'linear': linear_block, 'act': act_block, 'reshape': reshape_block,
          'cat': cat_block, 'add': add_block, 'identity_branch': identity_branch_block, 'pool_between': pool_between_block,
          'bn_chain': bn_chain_block, 'fanout': fanout_block, 'timm': timm_block, 'token_bn': token_bn_block, 'parent': parent_block}

def kinds_for(shape):
    "Block kinds that can read a tensor of `shape` (the classic ones weighted up)."
    r = len(shape)
    kinds = ['bn', 'bn', 'linear', 'act', 'reshape']
    if r >= 2: kinds += ['conv', 'conv', 'conv', 'cat', 'add', 'bn_chain', 'fanout', 'parent']
    if r in (3, 4): kinds += ['identity_branch', 'pool_between']
    if r == 4: kinds += ['timm', 'conv']
    if r == 3: kinds += ['token_bn']
    return kinds if r >= 2 else ['linear', 'act']

@st.composite
def net_input(draw):
    "An image batch (most often), tokens, flat features, token ids (the net starts with an Embedding), or an unbatched image/sequence."
    kind = draw(st.sampled_from(['image', 'image', 'image', 'tokens', 'flat', 'ids', 'unbatched_image', 'unbatched_seq']))
    c, s = draw(st.integers(1, 4)), draw(st.integers(4, 8))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))   # values reproducible from the example alone
    if kind == 'ids': return torch.randint(0, 10, (2, draw(st.integers(2, 6))), generator=g)
    if kind == 'image': shape = (2, c, s, s)
    elif kind == 'unbatched_image': shape = (c, s, s)
    elif kind == 'unbatched_seq': shape = (c, s)
    elif kind == 'flat': shape = (2, draw(st.integers(2, 8)))
    else: shape = (2, draw(st.integers(2, 6)), draw(st.integers(2, 6)))   # tokens (N, L, F)
    return torch.randn(shape, generator=g)

@st.composite
def random_net(draw):
    torch.manual_seed(draw(st.integers(0, 2**16)))   # module initialization reproducible from the example alone
    x = draw(net_input())
    blocks, kinds = [], []
    if not x.is_floating_point():   # ids: an Embedding, maybe after a no-op flatten(1) and before a Linear (bn(fc(emb(ids))))
        emb = nn.Embedding(10, draw(st.integers(2, 6)))
        if draw(st.booleans()): emb = nn.Sequential(Op('flatten'), emb)
        if draw(st.booleans()): emb = nn.Sequential(emb, nn.Linear(emb(x).shape[-1], draw(st.integers(1, 6))))
        blocks.append(emb); kinds.append('embedding')
    shape = tuple(blocks[0](x).shape) if blocks else tuple(x.shape)
    if blocks and draw(st.booleans()): blocks.append(bn_for(shape)); kinds.append('bn')
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(kinds_for(shape)))
        block = draw(BLOCKS[kind](shape))
        if (new := _out_shape(block, shape)) is None: continue
        blocks.append(block); kinds.append(kind); shape = new
        if kind in ('conv', 'cat', 'add', 'linear', 'reshape') and len(shape) >= 2 and draw(st.booleans()):
            blocks.append(bn_for(shape)); kinds.append('bn')   # a BatchNorm right after, of the rank it sees
    if len(shape) >= 3 and draw(st.booleans()):   # a head: flatten, then Linear / BatchNorm1d / ReLU / Dropout
        blocks.append(nn.Flatten()); f = int(torch.tensor(shape[1:]).prod())
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(['linear', 'bn', 'relu', 'dropout']))
            if kind == 'linear': out = draw(st.integers(1, 6)); blocks.append(nn.Linear(f, out, bias=draw(st.booleans()))); f = out
            elif kind == 'bn': blocks.append(nn.BatchNorm1d(f))
            elif kind == 'relu': blocks.append(nn.ReLU())
            else: blocks.append(nn.Dropout(.2))
        kinds.append('head')
    return Net(blocks, kinds), x

@pytest.fixture(autouse=True)
def one_thread():
    "Tiny tensors: intra-op threads only cost time (much of it on a shared, loaded machine)."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

@given(random_net(), st.booleans(), st.booleans(), st.integers(0, 2**16))
def test_random_networks_fold_exactly(net_x, example, backward, seed):
    net, x = net_x
    torch.manual_seed(seed)
    for m in net.modules():   # random weights too, so a wrong fold can't hide behind a symmetric init
        if isinstance(m, (_ConvNd, nn.Linear)): nn.init.normal_(m.weight, std=1.5 / m.weight[0].numel() ** .5)
        elif isinstance(m, nn.Embedding): nn.init.normal_(m.weight)
    try:   # blocks were checked one by one on contiguous inputs: a view after a transpose only fails in the whole net
        with torch.no_grad(): net.eval()(x)
    except RuntimeError: assume(False)
    _, report = fold_and_check(net, x, example=example, seed=seed, backward=backward)
    event(f'folded {report.n_folded} of {len(report)}')
    for k in set(net.kinds): event(f'block: {k}')
