"""Trace the model with torch.fx, and decide for each BatchNorm whether, and into which layer, it folds exactly.

Docs: https://fasterbn.github.io/fasterbn/graph.html.md"""

from __future__ import annotations
import copy, math, operator, sys
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable
import torch, torch.nn as nn, torch.nn.functional as F, torch.fx as fx
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd
from torch.nn.utils import parametrize
from .fold_math import bn_affine

# ---------------------------------------------------------------------------------------------------- reasons
@dataclass(frozen=True)
class Reason:
    "Why a BatchNorm is not folded: a `kind`, for grouping and advice, and the sentence a user reads."
    kind: str  # one of `REASON_KINDS`
    text: str  # what stops the fold, with qualified names
    def __str__(self): return self.text

REASON_KINDS = {  # kind -> what a user can do about it ('' when the text already says it)
    'training': 'call model.eval() before folding',
    'batch-stats': 'train it with track_running_stats=True: there is no fixed map to fold',
    'bad-stats': 'recalibrate its running statistics',
    'not-ready': '',
    'unknown-kind': 'register it with `register_batchnorm` or `register_layer` if it computes exactly a BatchNorm or a Conv/Linear',
    'reused': 'give each call its own module',
    'read': 'do not read its tensors in forward, or fold by hand',
    'aliased': 'keep one reference to it, registered once',
    'tied': 'untie the weights before folding',
    'hooks': 'remove the hooks while folding',
    'parametrized': 'remove the parametrization (weight_norm, a pruning mask...) first',
    'outside-use': 'make the forward that uses it traceable, or give it its own module',
    'needs-example-inputs': 'pass example_inputs (a batch the model accepts)',
    'shapes': 'check that example_inputs match what the model expects',
    'nonlinear': 'put the BatchNorm right after a Conv/Linear whose output nothing else reads, or right before one that alone reads it',
    'shared-output': 'give the other reader its own copy of the value, or fold by hand',
    'no-layer': 'put the BatchNorm right after a Conv/Linear, or right before one',
    'rank': '',
    'channels': '',
    'padding': "use padding=0, or padding_mode='replicate'/'reflect'/'circular', so the shift stays constant at the borders",
    'sign': '',
    'numeric': 'fold in float32, then cast',
    'untraceable': 'make that forward traceable by torch.fx',
    'unused': '',
    'scripted': 'fold the nn.Module before calling torch.jit.script',
    'check': 'fold by hand, or stop forward from inspecting the modules (isinstance checks, `.bias is None`)',
}

class Refusal(Exception):
    "Raised inside a rule to refuse a fold with a `Reason`."
    def __init__(self, kind: str, text: str): super().__init__(text); self.reason = Reason(kind, text)

def refuse(kind: str, text: str): raise Refusal(kind, text)

# ---------------------------------------------------------------------------------------------------- what is a BatchNorm
def _identity_like(bn: nn.Module) -> nn.Module: return nn.Identity()

def _drop_act(bn: nn.Module) -> nn.Module:
    "timm's norm-act layers normalize, then apply `drop`, then `act`: that is what stays after folding (eval identities left out)."
    kept = [m for m in (bn.drop, bn.act) if type(m) is not nn.Identity]   # a dropout stays: it acts when the folded model trains
    return nn.Identity() if not kept else kept[0] if len(kept) == 1 else nn.Sequential(*kept)

@dataclass
class BatchNormKind:
    "How fasterbn reads and removes one kind of BatchNorm."
    replacement: Callable = _identity_like  # bn -> the module that stands in its place once folded (the ops it applies after normalizing)
    ranks: tuple|None = None  # input ranks at which it is the per-channel affine map `s*x + t` on dim 1, output shaped like the input (None: any rank >= 2)
    accepts: tuple|None = None  # input ranks at which it runs at all: a fact about every input the model accepts (None: unknown)
    keeps_shape: bool = True  # output shaped like the input at any rank (`F.batch_norm`); False for frozen ones that broadcast (1, C, 1, 1)

_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
BATCHNORM_KINDS: dict[type, BatchNormKind] = {}  # exact class -> kind, for classes whose `forward` differs from `_BatchNorm`'s
_KNOWN_BN = {  # classes outside torch.nn, recognized once their module is imported: (module, class) -> kind
    ('torchvision.ops.misc', 'FrozenBatchNorm2d'): BatchNormKind(ranks=(4,), keeps_shape=False),  # broadcasts (1, C, 1, 1): exact only on 4-D input
    ('timm.layers.norm', 'FrozenBatchNorm2d'): BatchNormKind(ranks=(4,), keeps_shape=False),
    ('timm.layers.norm_act', 'BatchNormAct2d'): BatchNormKind(_drop_act, None, (4,)),  # its forward asserts a 4-D input
    ('timm.layers.norm_act', 'SyncBatchNormAct'): BatchNormKind(_drop_act),
    ('timm.layers.norm_act', 'FrozenBatchNormAct2d'): BatchNormKind(_drop_act, (4,), keeps_shape=False),
}

def register_batchnorm(cls: type, # a module class whose eval forward is `bn_affine`'s map, then `replacement`
                       replacement: Callable=_identity_like, # bn -> what stands in its place once folded
                       ranks: tuple|None=None, # input ranks at which it is the affine map on dim 1 (None: any rank >= 2)
                       accepts: tuple|None=None, # input ranks at which it runs at all (None: unknown)
                       keeps_shape: bool=True, # is its output shaped like its input at every rank it accepts?
                      ):
    "Teach fasterbn a BatchNorm class of your own: it needs `running_mean`, `running_var`, `eps` and optional `weight`/`bias`."
    BATCHNORM_KINDS[cls] = BatchNormKind(replacement, ranks, accepts, keeps_shape)

def _known(table: dict) -> dict:
    "The classes of `table` whose module is imported (a model can't hold one otherwise)."
    out = {}
    for (mod, name), v in table.items():
        if (m := sys.modules.get(mod)) is not None and isinstance(c := getattr(m, name, None), type): out[c] = v
    return out

_CHECK_RANKS = {nn.BatchNorm1d: (2, 3), nn.BatchNorm2d: (4,), nn.BatchNorm3d: (5,)}

def batchnorm_kind(m: nn.Module) -> BatchNormKind|None:
    "How to fold `m` if it is a BatchNorm fasterbn knows (None otherwise)."
    cls = type(m)
    if cls in BATCHNORM_KINDS: return BATCHNORM_KINDS[cls]
    if (k := _known(_KNOWN_BN).get(cls)) is not None: return k
    if isinstance(m, _BatchNorm) and cls.forward is _BatchNorm.forward:
        base = next((c for c in cls.__mro__ if c in _CHECK_RANKS), None)   # the input check it inherits
        accepts = _CHECK_RANKS[base] if base is not None and cls._check_input_dim is base._check_input_dim else None
        return BatchNormKind(accepts=accepts)   # `F.batch_norm` normalizes dim 1 at any rank it runs at
    return None

def is_batchnorm(m: nn.Module) -> bool:
    "Is `m` a BatchNorm, known to fasterbn or not (any `_BatchNorm` subclass, torchvision's and timm's frozen ones, registered classes)?"
    return isinstance(m, _BatchNorm) or batchnorm_kind(m) is not None

_PLAIN_ATTRS = ('num_features', 'eps', 'momentum', 'affine', 'track_running_stats')

def bn_replacement(bn: nn.Module, # a BatchNorm fasterbn knows
                   direction: str='forward', # how it was folded: 'branch' leaves zeros in its place
                  ) -> nn.Module:
    "What takes a folded BatchNorm's place. It keeps the BatchNorm's plain settings, which a forward may read (`self.bn.num_features`)."
    new = nn.Threshold(float('inf'), 0.) if direction == 'branch' else batchnorm_kind(bn).replacement(bn)   # x if x > inf else 0: zeros
    for a in _PLAIN_ATTRS:
        if a in vars(bn) and a not in vars(new): setattr(new, a, getattr(bn, a))
    return new

def _bn_channels(bn: nn.Module) -> int: return bn.running_mean.numel() if getattr(bn, 'running_mean', None) is not None else bn.num_features

# ---------------------------------------------------------------------------------------------------- what is a layer
@dataclass
class LayerKind:
    "How a BatchNorm's shift reaches the borders of a layer's output, for backward folds."
    pads: Callable  # layer -> 'none' (no padding), 'copy' (padding copies values) or 'zeros'

def _conv_pads(conv) -> str:
    if isinstance(conv, nn.Linear): return 'none'
    if isinstance(conv, _ConvTransposeNd): return 'zeros'   # borders and stride phases see the shift through different taps
    if not any(p != 0 for p in conv._reversed_padding_repeated_twice): return 'none'
    return 'zeros' if conv.padding_mode == 'zeros' else 'copy'

def _same_pads(conv) -> str:
    "timm's `Conv2dSame` pads with zeros at run time, except that a 1x1 kernel never needs padding."
    return 'none' if all(k == 1 for k in conv.kernel_size) else 'zeros'

LAYER_KINDS: dict[type, LayerKind] = {}
_KNOWN_LAYERS = {('timm.layers.conv2d_same', 'Conv2dSame'): LayerKind(_same_pads)}

def register_layer(cls: type, # a `Conv*d`/`ConvTranspose*d`/`Linear` subclass whose forward is that layer's function (of a padded input)
                   pads: Callable=_conv_pads, # layer -> 'none', 'copy' or 'zeros': what the layer's padding fills in
                  ):
    "Let BatchNorms fold into a layer class of your own that redefines `forward` but computes a plain convolution or linear map."
    if not issubclass(cls, (_ConvNd, nn.Linear)): raise TypeError(f'{cls.__name__} must subclass a Conv, ConvTranspose or Linear')
    LAYER_KINDS[cls] = LayerKind(pads)

def _torch_base(m: nn.Module) -> type:
    "The nearest class of `m` defined by torch itself."
    return next(c for c in type(m).__mro__ if c.__module__.startswith('torch.'))

def _overridden(m: nn.Module) -> list[str]:
    "Names of the compute methods that a subclass of a torch layer redefines (a changed function we can't fold through)."
    base = _torch_base(m)
    return [f for f in ('forward', '_conv_forward') if hasattr(base, f) and getattr(type(m), f) is not getattr(base, f)]

def layer_kind(m: nn.Module) -> LayerKind|None:
    "How to fold into `m` if it is a layer fasterbn knows (None otherwise)."
    if not isinstance(m, (_ConvNd, nn.Linear)): return None
    if type(m) in LAYER_KINDS: return LAYER_KINDS[type(m)]
    if (k := _known(_KNOWN_LAYERS).get(type(m))) is not None: return k
    return None if _overridden(m) else LayerKind(_conv_pads)

def is_fold_layer(m: nn.Module) -> bool:
    "Is `m` a Conv, ConvTranspose or Linear (subclasses included), the layers a BatchNorm can fold into?"
    return isinstance(m, (_ConvNd, nn.Linear))

def _out_channels(layer) -> int: return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
def _in_channels(layer) -> int: return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
def _channel_axis(layer) -> int:
    "The layer's channel axis counted from the back: -1 for Linear, -(k+1) for a k-d convolution, batched or not."
    return -1 if isinstance(layer, nn.Linear) else -(len(layer.kernel_size) + 1)

# ---------------------------------------------------------------------------------------------------- tracing
def has_forward_hooks(m: nn.Module) -> bool:
    "Does `m` carry forward hooks or forward pre-hooks, which torch.fx would not record?"
    return bool(m._forward_hooks or m._forward_pre_hooks)

def _global_forward_hooks() -> bool:
    "Is a global module forward hook registered (`torch.nn.modules.module.register_module_forward_hook` and friends)?"
    from torch.nn.modules import module as M
    return bool(M._global_forward_hooks or M._global_forward_pre_hooks)

_LEAF_MOVES: set[type] = set()   # module classes that a registered move matches: kept as leaves

class FoldTracer(fx.Tracer):
    "A torch.fx tracer that keeps BatchNorms, Conv/Linear layers, hooked and scripted modules (and registered ones) as leaves."
    proxy_buffer_attributes = True   # a forward that reads a buffer (`self.bn.running_mean`) shows it in the graph, not as a baked constant
    def __init__(self): super().__init__()
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (is_batchnorm(m) or is_fold_layer(m) or has_forward_hooks(m) or isinstance(m, torch.jit.ScriptModule)
                or type(m) in _LEAF_MOVES or super().is_leaf_module(m, qualname))

def _python_modules(model: nn.Module) -> list[nn.Module]:
    "The modules whose state Python code can change (a scripted module keeps its own)."
    return [m for m in model.modules() if not isinstance(m, torch.jit.ScriptModule)]

@contextmanager
def preserved(model: nn.Module): # the model whose `forward` is about to be traced or run
    "Undo what tracing or running `forward` leaves on `model`: new or changed attributes (fx Proxies too), edited lists and dicts, buffer values."
    mods = _python_modules(model)
    saved = [(m, dict(m.__dict__), dict(m._parameters), dict(m._buffers), dict(m._modules)) for m in mods]
    contents = [(v, copy.copy(v)) for m in mods for v in vars(m).values() if type(v) in (list, dict, set)]   # `self.cache.append(y)`
    tensors = [t for m in mods for t in (*m._parameters.values(), *m._buffers.values()) if t is not None]
    versions = [t._version for t in tensors]
    copies = {id(b): b.detach().clone() for m in mods for b in m._buffers.values() if b is not None and not b.is_meta}
    try: yield
    finally:
        for m, d, p, b, s in saved:
            for inner, old in ((m._parameters, p), (m._buffers, b), (m._modules, s)): inner.clear(); inner.update(old)
            m.__dict__.clear(); m.__dict__.update(d)
        for v, old in contents:
            v.clear(); v.update(old) if not isinstance(v, list) else v.extend(old)
        changed = [t for t, v in zip(tensors, versions) if t._version != v]
        with torch.no_grad():
            for t in changed:
                if id(t) in copies: t.copy_(copies[id(t)])
        if [t for t in changed if id(t) not in copies]:
            raise RuntimeError('forward changed parameters in place while fasterbn traced or ran it: fasterbn cannot fold a model that edits its own weights')

def trace(model: nn.Module) -> fx.Graph:
    "Trace `model` with `FoldTracer`, leaving nothing on it (raises whatever fx raises for an untraceable forward)."
    with preserved(model): return FoldTracer().trace(model)

# ---------------------------------------------------------------------------------------------------- ops, by what they do to ranks
def _arg(n: fx.Node, i: int, name: str, default=None):
    "Argument `i` (or keyword `name`) of a call node."
    return n.args[i] if len(n.args) > i else n.kwargs.get(name, default)

def _fn(n, *fns) -> bool: return n.op == 'call_function' and n.target in fns
def _meth(n, *names) -> bool: return n.op == 'call_method' and n.target in names

_ELEMENTWISE_MODULES = {nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Threshold,
    nn.LogSigmoid, nn.Hardshrink, nn.Softshrink, nn.Identity, *_DROPOUTS}
_RANK_KEEPING_MODULES = {*_ELEMENTWISE_MODULES, nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.GLU, nn.LayerNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
    nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
    nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d,
    nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle}
_POOL_DIMS = {nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3, nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
              nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3}
_POOL_FNS = {F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3, F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2,
             F.adaptive_avg_pool3d: 3, F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, F.adaptive_max_pool1d: 1,
             F.adaptive_max_pool2d: 2, F.adaptive_max_pool3d: 3, torch.avg_pool1d: 1, torch.max_pool1d: 1, torch.max_pool2d: 2, torch.max_pool3d: 3}
_ELEMENTWISE_FNS = {F.relu, F.relu6, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, F.sigmoid, F.tanh, F.leaky_relu,
    F.elu, F.selu, F.celu, F.softplus, F.softsign, F.logsigmoid, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
    torch.relu, torch.sigmoid, torch.tanh, torch.exp, torch.log, torch.abs, torch.neg, torch.sqrt, torch.rsqrt, torch.clamp,
    torch.clip, torch.square, torch.sin, torch.cos, torch.erf, operator.neg, operator.pos}
_RANK_KEEPING_FNS = {*_ELEMENTWISE_FNS, F.softmax, F.log_softmax, F.layer_norm, F.group_norm, F.normalize, F.pad, F.interpolate,
    F.pixel_shuffle, F.pixel_unshuffle, F.channel_shuffle, torch.softmax, torch.flip, torch.roll}
_RANK_KEEPING_METHODS = {'relu', 'relu_', 'sigmoid', 'sigmoid_', 'tanh', 'exp', 'log', 'abs', 'neg', 'sqrt', 'rsqrt', 'clamp',
    'clamp_', 'clip', 'square', 'float', 'half', 'double', 'bfloat16', 'to', 'type_as', 'contiguous', 'clone', 'detach', 'softmax',
    'log_softmax', 'flip', 'roll', 'masked_fill', 'sin', 'cos', 'erf', 'pow', 'transpose', 'swapaxes', 'transpose_'}
_BINARY = {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul, operator.truediv, operator.itruediv,
           torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum}
_BINARY_METHODS = {'add', 'add_', 'sub', 'sub_', 'mul', 'mul_', 'div', 'div_', 'maximum', 'minimum'}
_CATS = (torch.cat, torch.concat, torch.concatenate)
_REDUCTIONS = {'mean', 'sum', 'amax', 'amin', 'std', 'var', 'nanmean', 'nansum'}

def _cat_dim(n: fx.Node):
    "The `dim` of a `torch.cat` node (also spelled `axis`)."
    return _arg(n, 1, 'dim', n.kwargs.get('axis', 0))

def _cat_pieces_of(n: fx.Node):
    "The tensors a `torch.cat` node joins (positional, or the `tensors` keyword)."
    return _arg(n, 0, 'tensors')

def _flatten_range(n: fx.Node, facts) -> tuple|None:
    "(start_dim, end_dim) if `n` flattens (`nn.Flatten`, `torch.flatten`, `.flatten`, `x.view(x.size(0), -1)`), else None."
    if n.op == 'call_module' and type(m := facts.module(n)) is nn.Flatten: return m.start_dim, m.end_dim
    if _fn(n, torch.flatten) or _meth(n, 'flatten'): return _arg(n, 1, 'start_dim', 0), _arg(n, 2, 'end_dim', -1)
    if _meth(n, 'view', 'reshape') and len(n.args) == 3 and n.args[2] == -1 and _is_batch_size(n.args[1], n.args[0]): return 1, -1
    return None

def _is_batch_size(size, x) -> bool:
    "Is `size` the node `x.size(0)` or `x.shape[0]`?"
    if not isinstance(size, fx.Node) or not size.args or size.args[0] is not x and not (
            size.op == 'call_function' and size.target is operator.getitem and isinstance(a := size.args[0], fx.Node)
            and a.op == 'call_function' and a.target is getattr and a.args == (x, 'shape')):
        return False
    if _meth(size, 'size'): return size.args[1:] == (0,)
    return size.target is operator.getitem and size.args[1] == 0

def _dims(d) -> tuple|None:
    if isinstance(d, int): return (d,)
    if isinstance(d, (tuple, list)) and all(isinstance(i, int) for i in d): return tuple(d)
    return None

def _rank_rule(n: fx.Node, facts) -> tuple:
    """What `n` does to ranks, from the table of known ops: ('same', x), ('const', k), ('delta', x, d), ('like', y),
    ('max', nodes), ('flatten', x, start, end); and `accepts`, the input ranks at which it runs. ('unknown',) otherwise."""
    a0 = n.args[0] if n.args else None
    if n.op == 'call_module':
        m, cls = facts.module(n), type(facts.module(n))
        if (k := batchnorm_kind(m)) is not None: return ('same', a0) if k.keeps_shape else ('unknown',), k.accepts
        if is_fold_layer(m) and layer_kind(m) is not None:
            if isinstance(m, nn.Linear): return ('same', a0), None
            d = len(m.kernel_size); return ('same', a0), (d + 1, d + 2)
        if cls in _POOL_DIMS: d = _POOL_DIMS[cls]; return ('same', a0), (d + 1, d + 2)
        if cls in _RANK_KEEPING_MODULES: return ('same', a0), None
        if cls is nn.Flatten: return ('flatten', a0, m.start_dim, m.end_dim), None
        if cls is nn.Unflatten: return ('delta', a0, len(m.unflattened_size) - 1), None
        if cls is nn.Embedding: return ('delta', a0, 1), None
        return ('unknown',), None
    if n.op == 'call_function':
        if n.target in _POOL_FNS: d = _POOL_FNS[n.target]; return ('same', a0), (d + 1, d + 2)
        if n.target in _RANK_KEEPING_FNS: return ('same', a0), None
        if n.target in _BINARY: return _binary(n), None
        if n.target in _CATS: return (('cat', list(p)) if isinstance(p := _cat_pieces_of(n), (list, tuple)) else ('unknown',)), None
        if n.target is torch.flatten: return ('flatten', a0, _arg(n, 1, 'start_dim', 0), _arg(n, 2, 'end_dim', -1)), None
        if n.target in (torch.transpose, torch.swapaxes): return ('same', a0), None
        if n.target is torch.permute: return _const(_arg(n, 1, 'dims')), None
        if n.target is torch.reshape: return _const(_arg(n, 1, 'shape')), None
        if n.target is torch.unsqueeze: return ('delta', a0, 1), None
        if n.target is F.embedding: return ('delta', a0, 1), None
        if n.target is torch.mean: return _reduction(n), None
        return ('unknown',), None
    if n.op == 'call_method':
        t = n.target
        if t in _RANK_KEEPING_METHODS: return ('same', a0), None
        if t in _BINARY_METHODS: return _binary(n), None
        if t == 'flatten': return ('flatten', a0, _arg(n, 1, 'start_dim', 0), _arg(n, 2, 'end_dim', -1)), None
        if t in ('view', 'reshape'):
            rest = n.args[1:]
            if len(rest) == 1 and isinstance(rest[0], torch.dtype): return ('same', a0), None   # x.view(torch.float32)
            if len(rest) == 1: return _const(rest[0]), None   # one argument: a shape tuple, or a node (unknown)
            return ('const', len(rest)), None
        if t in ('reshape_as', 'view_as', 'expand_as'): return ('like', n.args[1]), None
        if t == 'permute': return (_const(n.args[1]) if len(n.args) == 2 else ('const', len(n.args) - 1)), None
        if t == 'unsqueeze': return ('delta', a0, 1), None
        if t in _REDUCTIONS: return _reduction(n), None
        return ('unknown',), None
    return ('unknown',), None

def _const(shape) -> tuple:
    "The rank of a literal shape (a tuple or list, whose items may be nodes); unknown if the shape itself is a node."
    return ('const', len(shape)) if isinstance(shape, (tuple, list, torch.Size)) else ('unknown',)

def _binary(n: fx.Node) -> tuple:
    tensors = [a for a in n.args[:2] if isinstance(a, fx.Node)]
    return ('same', tensors[0]) if len(tensors) == 1 else ('max', tensors)

def _reduction(n: fx.Node) -> tuple:
    dims, keep = _dims(_arg(n, 1, 'dim')), _arg(n, 2, 'keepdim', False)
    if _arg(n, 1, 'dim') is None and not n.kwargs.get('dim') and len(n.args) < 2: return ('const', 0)
    if dims is None or not isinstance(keep, bool): return ('unknown',)
    return ('same', n.args[0]) if keep else ('delta', n.args[0], -len(set(dims)))

class Ranks:
    """Ranks proven from the graph alone, for every input the model accepts. Ops that keep rank tie their input and output
    into one class (union-find); a class knows the set of ranks every op in it admits; relations (+1, like, max) run to a fixpoint."""
    def __init__(self, graph: fx.Graph, facts):
        self.parent, self.allowed, rel = {}, {}, []
        for n in graph.nodes:
            rule, accepts = _rank_rule(n, facts)
            x = n.args[0] if n.args and isinstance(n.args[0], fx.Node) else None
            if accepts is not None and x is not None: self._limit(x, set(accepts))
            kind = rule[0]
            if kind == 'same' and isinstance(rule[1], fx.Node): self._union(n, rule[1])
            elif kind == 'cat':
                for p in rule[1]:
                    if isinstance(p, fx.Node): self._union(n, p)
            elif kind == 'const': self._limit(n, {rule[1]})
            elif kind in ('delta', 'like', 'max', 'flatten'): rel.append((n, rule))
        for _ in range(len(rel) + 1):   # each pass settles at least one relation, or nothing changes
            if not any(self._relate(n, rule) for n, rule in rel): break

    def _find(self, n):
        root = n
        while (p := self.parent.get(root, root)) is not root: root = p
        while (p := self.parent.get(n, n)) is not root: self.parent[n] = root; n = p
        return root

    def _union(self, a, b):
        ra, rb = self._find(a), self._find(b)
        if ra is rb: return
        self.parent[rb] = ra
        sa, sb = self.allowed.pop(ra, None), self.allowed.pop(rb, None)
        self.allowed[ra] = sb if sa is None else sa if sb is None else sa & sb

    def _limit(self, n, ranks: set) -> bool:
        r = self._find(n)
        old = self.allowed.get(r)
        new = ranks if old is None else old & ranks
        self.allowed[r] = new
        return new != old

    def of(self, n) -> int|None:
        "The rank of node `n`'s value, if proven."
        s = self.allowed.get(self._find(n)) if isinstance(n, fx.Node) else None
        return next(iter(s)) if s is not None and len(s) == 1 else None

    def _relate(self, n, rule) -> bool:
        kind, out = rule[0], self.of(n)
        if kind == 'delta':
            x, d = rule[1], rule[2]
            if (r := self.of(x)) is not None and out is None: return self._limit(n, {r + d})
            if out is not None and r is None and isinstance(x, fx.Node): return self._limit(x, {out - d})
        elif kind == 'like':
            if (r := self.of(rule[1])) is not None and out is None: return self._limit(n, {r})
        elif kind == 'max':
            rs = [self.of(a) for a in rule[1]]
            if None not in rs and out is None: return self._limit(n, {max(rs)})
        elif kind == 'flatten':
            x, start, end = rule[1:]
            if not (isinstance(start, int) and isinstance(end, int)): return False
            if start >= 0 and end == -1 and out is None: return self._limit(n, {start + 1})
            if (start >= 0) == (end >= 0) and end >= start:   # both from the front or both from the back: a fixed number of dims merge
                d = end - start
                if (r := self.of(x)) is not None and out is None: return self._limit(n, {r - d})
                if out is not None and r is None and isinstance(x, fx.Node): return self._limit(x, {out + d})
            elif (r := self.of(x)) is not None and out is None:
                s, e = start % r, end % r
                return self._limit(n, {r - (e - s)})
        return False

# ---------------------------------------------------------------------------------------------------- facts about one traced root
def _value_users(n: fx.Node) -> list[fx.Node]:
    "Users of `n` that read its values; `x.size()`, `x.shape`, `x.dim()` only read its shape, which no fold changes."
    def shape_only(u):
        return (u.op == 'call_method' and (u.target in ('size', 'dim', 'numel') or
                                           u.target in ('reshape_as', 'view_as', 'expand_as', 'type_as') and u.args[0] is not n) or
                u.op == 'call_function' and (u.target is getattr and u.args[1] in ('shape', 'dtype', 'device', 'ndim') or
                                             u.target in (torch.zeros_like, torch.ones_like, torch.empty_like)))
    return [u for u in n.users if not shape_only(u)]

class _ShapeRecorder(fx.Interpreter):
    "Runs a graph and keeps the shape of every tensor value (fx's ShapeProp prints a traceback on errors; this records them)."
    def run_node(self, n):
        out = super().run_node(n)
        if isinstance(out, Tensor): self.shapes[n] = tuple(out.shape)
        return out

@dataclass
class ModelFacts:
    "What no single trace shows: how modules and tensors are shared across the whole model, and plain Python references to modules."
    names: dict        # id(module) -> its first qualified name
    aliases: Counter   # id(module) -> number of names it is registered under
    shared: set        # ids of parameters/buffers owned by more than one module
    held: dict         # id(module) -> where a plain Python container or attribute also holds it
    global_hooks: bool # a global module forward hook is registered

    @classmethod
    def of(cls, model: nn.Module) -> ModelFacts:
        names, aliases, owners, held = {}, Counter(), defaultdict(set), {}
        for name, m in model.named_modules(remove_duplicate=False):
            names.setdefault(id(m), name); aliases[id(m)] += 1
            for t in [*m._parameters.values(), *m._buffers.values()]:
                if t is not None: owners[id(t)].add(id(m))
        for m in model.modules():
            for attr, v in vars(m).items():
                if attr in ('_parameters', '_buffers', '_modules'): continue   # registered: the fold edits them
                for obj in _modules_in(v):
                    if id(obj) in names: held.setdefault(id(obj), f'`{attr}` of `{names[id(m)] or "<model>"}`')
        return cls(names, aliases, {t for t, o in owners.items() if len(o) > 1}, held, _global_forward_hooks())

def _modules_in(v, depth: int=0):
    "Modules held by a plain value: the value itself, or inside lists, tuples, sets and dicts (a few levels deep)."
    if isinstance(v, nn.Module): yield v
    elif depth < 3 and isinstance(v, (list, tuple, set, frozenset)):
        for x in v: yield from _modules_in(x, depth + 1)
    elif depth < 3 and isinstance(v, dict):
        for x in v.values(): yield from _modules_in(x, depth + 1)

@dataclass
class Outside:
    "What is known of the uses of a traced root's modules from outside the root (when the root is planned alone)."
    root: str = ''                                     # qualified name of the root ('' for the model)
    calls: Counter = field(default_factory=Counter)    # qualified module name -> calls in traced ancestors' graphs
    reads: set = field(default_factory=set)            # qualified module names whose tensors traced ancestors read
    blind: str|None = None                             # an untraceable ancestor, whose own uses no graph shows
    recorder: object = None                            # a `Recorder` run of the whole model on example_inputs, if any
    checked: bool = False                              # an ancestor's output is checked on example_inputs, which covers this root

def _qual(prefix: str, name: str) -> str: return f'{prefix}{name}' if name else prefix.rstrip('.')

class GraphFacts:
    "What the folding rules need to know about a traced `root`: modules, call sites, attribute reads, sharing, ranks, shapes."
    def __init__(self, root: nn.Module, # the module that was traced
                 graph: fx.Graph, # its graph from `trace`
                 example_inputs: tuple|None=None, # inputs to `root`, run only if a rule needs a shape
                 model: ModelFacts|None=None, # facts about the whole model (default: `root` is the model)
                 outside: Outside|None=None, # uses of `root`'s modules from outside it
                 prefix: str='', # `root`'s qualified name in the model, with a trailing dot
                ):
        self.root, self.graph, self.prefix = root, graph, prefix
        self.model, self.outside = model or ModelFacts.of(root), outside or Outside()
        self.modules = dict(root.named_modules())
        self.calls = Counter(n.target for n in graph.nodes if n.op == 'call_module')
        self.reads = Counter(self._owner(n.target) for n in graph.nodes if n.op == 'get_attr')
        self.example_inputs, self.shapes, self.shapes_error = example_inputs, None, None
        self._ranks, self.merged, self.affines = None, {}, {}   # merged: BatchNorm node -> the BatchNorm node it was folded into

    def affine(self, node: fx.Node) -> tuple[Tensor, Tensor]:
        "The float64 (scale, shift) of the BatchNorm `node` calls, composed with the BatchNorms merged into it."
        if node not in self.affines: self.affines[node] = bn_affine(self.module(node))
        return self.affines[node]

    def _owner(self, target: str) -> str:
        "The module a `get_attr` target belongs to: the module itself, or the owner of a parameter/buffer."
        return target if target in self.modules else target.rpartition('.')[0]

    def qual(self, name: str) -> str: return _qual(self.prefix, name)

    def module(self, n) -> nn.Module|None:
        "The module a `call_module` node calls (None for other nodes)."
        return self.modules.get(n.target) if isinstance(n, fx.Node) and n.op == 'call_module' else None

    def describe(self, n) -> str:
        "A short human name for what a node computes, with qualified module names."
        if not isinstance(n, fx.Node): return repr(n)
        if n.op == 'call_module': return f'`{self.qual(n.target)}` ({type(self.module(n)).__name__})'
        if n.op == 'placeholder': return f'the input `{n.target}`' + (f' of `{self.qual("")}`' if self.prefix else '')
        if n.op == 'get_attr': return f'the tensor `{self.qual(n.target)}`'
        if n.op == 'output': return 'the output' + (f' of `{self.qual("")}`' if self.prefix else '')
        name = getattr(n.target, '__name__', str(n.target))
        return f'`{name}`' if n.op == 'call_function' else f'`.{name}()`'

    def users(self, n) -> str:
        us = [self.describe(u) for u in _value_users(n)]
        return ', '.join(us[:3]) + (f' and {len(us) - 3} more' if len(us) > 3 else '')

    # -- shapes and ranks
    def _propagate(self):
        "Run `example_inputs` through the graph once, recording each node's shape (or the first line of the error)."
        inputs, self.example_inputs, self.shapes = self.example_inputs, None, {}
        rec = _ShapeRecorder(fx.GraphModule(self.root, self.graph))
        rec.shapes = self.shapes
        try:
            with torch.no_grad(), preserved(self.root): rec.run(*inputs)
        except Exception as e:
            msg = str(e).strip().splitlines()
            self.shapes_error = f'{type(e).__name__}: {msg[0] if msg else ""}'[:300]

    def shape(self, n) -> tuple|None:
        "The shape of `n`'s value on `example_inputs` (propagated on first use); None without them."
        if not isinstance(n, fx.Node): return None
        if self.example_inputs is not None: self._propagate()
        return (self.shapes or {}).get(n)

    def rank(self, n) -> int|None:
        "The rank of `n`'s value: proven from the graph, or else seen on `example_inputs`; refuses when the two disagree."
        if self._ranks is None: self._ranks = Ranks(self.graph, self)
        static = self._ranks.of(n)
        seen = len(s) if self.shapes is not None and (s := self.shapes.get(n)) is not None else None
        if static is None and seen is None and self.example_inputs is not None: seen = len(s) if (s := self.shape(n)) is not None else None
        if static is not None and seen is not None and static != seen:
            refuse('shapes', f'the graph proves {self.describe(n)} is {static}-D, but on example_inputs it is {seen}-D')
        return static if static is not None else seen

    def channels(self, n, axis: int) -> int|None:
        "The size of dim `axis` (from the front) of `n`'s value: from the module that produces it, else from shapes."
        node = n
        while isinstance(node, fx.Node) and (up := _keeps_dim(node, axis, self)) is not None: node = up
        m, r = self.module(node), self.rank(node) if isinstance(node, fx.Node) else None
        if r is not None and m is not None:
            if layer_kind(m) is not None and axis - r == _channel_axis(m): return _out_channels(m)
            if (k := batchnorm_kind(m)) is not None and axis == 1 and (k.keeps_shape or r in (k.ranks or ())): return _bn_channels(m)
        if isinstance(node, fx.Node) and _fn(node, *_CATS) and r is not None and isinstance(d := _cat_dim(node), int) and d % r == axis:
            sizes = [self.channels(p, axis) for p in _cat_pieces_of(node)]
            if None not in sizes: return sum(sizes)
        s = self.shape(n)
        return s[axis] if s is not None and 0 <= axis < len(s) else None

    # -- uses of a module, in this graph and outside it
    def use_problem(self, m: nn.Module, local: str, replaced: bool) -> Reason|None:
        "Why changing module `m` (called as `local` here) could change something else than this call; None if every use is accounted for."
        what = f'`{self.qual(local)}`'
        if (n := self.calls[local]) != 1: return Reason('reused', f'{what} is called at {n} sites in the forward: folding changes every call')
        if self.reads[local]: return Reason('read', f'the forward also reads the tensors of {what} directly')
        if self.model.aliases[id(m)] > 1: return Reason('aliased', f'{what} is registered under several names')
        if replaced and id(m) in self.model.held:
            return Reason('aliased', f'{what} is also held by {self.model.held[id(m)]}, which would still hold the BatchNorm after folding')
        if any(id(t) in self.model.shared for t in [*m._parameters.values(), *m._buffers.values()] if t is not None):
            return Reason('tied', f'{what} shares its weights or buffers with another module (tied weights cannot be rescaled apart)')
        if has_forward_hooks(m): return Reason('hooks', f'{what} has forward hooks, which would see different values')
        if self.model.global_hooks:
            return Reason('hooks', 'a global module forward hook is registered (register_module_forward_hook): it sees every module\'s output, which folding changes')
        return self.outside_problem(local)

    def outside_problem(self, local: str) -> Reason|None:
        "Why uses of `local` from outside this root may exist (an ancestor's graph, a recorded run, or no evidence)."
        o, q, parts = self.outside, self.qual(local), local.split('.')
        for i in range(1, len(parts) + 1):   # the module, and the modules between the root and it
            c = self.qual('.'.join(parts[:i]))
            if o.calls.get(c): return Reason('outside-use', f'`{c}` is also called from outside `{o.root}`, whose graph was planned alone')
            if c in o.reads: return Reason('outside-use', f'the tensors of `{c}` are also read from outside `{o.root}`, whose graph was planned alone')
        rec = o.recorder
        if rec is not None and q in rec.foreign:
            return Reason('read', f'the tensors of `{q}` are read outside its own forward (seen running example_inputs)')
        if o.blind is None: return None
        blind = o.blind or '<model>'
        if rec is None:
            return Reason('needs-example-inputs', f'`{blind}` does not trace, so `{o.root}` was planned alone, and fasterbn cannot see '
                                                  f'whether `{blind}` also uses `{q}`: pass example_inputs')
        if not (runs := rec.calls[o.root]): return Reason('needs-example-inputs', f'example_inputs never reach `{o.root}`, so its uses are unknown: pass example_inputs that do')
        if (total := rec.calls[q]) != self.calls[local] * runs:
            return Reason('outside-use', f'on example_inputs `{q}` runs {total} times, {self.calls[local] * runs} of them from `{o.root}`: '
                                         f'`{blind}` also uses it directly')
        return None


def _keeps_dim(n: fx.Node, axis: int, facts) -> fx.Node|None:
    "If `n`'s dim `axis` is its input's dim `axis`, same size (elementwise ops, BatchNorms, pooling before the pooled dims), that input."
    x = n.args[0] if n.args and isinstance(n.args[0], fx.Node) else None
    if x is None: return None
    m = facts.module(n)
    if type(m) in _ELEMENTWISE_MODULES or _fn(n, *_ELEMENTWISE_FNS) or _meth(n, 'relu', 'sigmoid', 'tanh', 'contiguous', 'clone'): return x
    if (k := batchnorm_kind(m) if m is not None else None) is not None and k.keeps_shape: return x
    pool = _POOL_DIMS.get(type(m)) if m is not None else _POOL_FNS.get(n.target) if n.op == 'call_function' else None
    if pool is not None and (r := facts.rank(n)) is not None and axis < r - pool: return x
    return None


# ---------------------------------------------------------------------------------------------------- a run on example_inputs
def _first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f'{type(e).__name__}: {msg[0] if msg else ""}'[:300]

class Recorder:
    "One run of the whole model on example_inputs: each module's calls and first inputs, and tensors read outside their module's forward."
    def __init__(self, model: nn.Module, example_inputs: tuple):
        from torch.overrides import TorchFunctionMode
        from torch.utils._pytree import tree_flatten
        names, owner = {}, {}
        for n, m in model.named_modules():
            names.setdefault(m, n)
            for t in [*m._parameters.values(), *m._buffers.values()]:
                if t is not None: owner.setdefault(id(t), m)
        self.calls, self.inputs, self.foreign, self.error, running = Counter(), {}, set(), None, Counter()
        def pre(m, args):
            n = names[m]; self.calls[n] += 1; running[id(m)] += 1
            if n not in self.inputs and args and all(isinstance(a, Tensor) for a in args): self.inputs[n] = tuple(a.detach().clone() for a in args)
        def post(m, args, out): running[id(m)] -= 1
        outer = self
        class Reads(TorchFunctionMode):   # sees every tensor op; a parameter/buffer used while its module is not running is read "from outside"
            def __torch_function__(self, func, types, args=(), kwargs=None):
                for t in tree_flatten((args, kwargs or {}))[0]:
                    if isinstance(t, Tensor) and (m := owner.get(id(t))) is not None and not running[id(m)]: outer.foreign.add(names[m])
                return func(*args, **(kwargs or {}))
        with preserved(model):
            handles = [h for m in names if not isinstance(m, torch.jit.ScriptModule)
                       for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post, always_call=True))]
            try:
                with torch.no_grad(), Reads(): model(*example_inputs)
            except Exception as e: self.error = _first_line(e)
            finally:
                for h in handles: h.remove()

# ---------------------------------------------------------------------------------------------------- the table of moves
@dataclass
class Flow:
    "Where a BatchNorm's channels sit in one value: along which axis, and which BatchNorm channel each position holds."
    cmap: Tensor            # BatchNorm channel at each position along the axis, -1 where the value holds something else
    front: int|None = None  # the axis, counted from the front, if known
    back: int|None = None   # the same axis counted from the back (-1 is the last dim), if known
    shift: bool = True      # does this value carry the BatchNorm's shift? (of an `add`'s operands only one does)
    block: int|None = 1     # positions per channel: 1, or after a `flatten` the spatial size, known once a Linear reads it

    def at(self, n: fx.Node, facts: GraphFacts) -> Flow:
        "This flow on `n`, with both forms of the axis filled in when `n`'s rank is known."
        r = facts.rank(n)
        if r is None or self.front is not None and self.back is not None: return self
        front = self.front if self.front is not None else self.back + r if self.back is not None else None
        if front is None or not 0 <= front < r:
            refuse('rank', f'the BatchNorm\'s channel axis is not a dim of the {r}-D value {facts.describe(n)}: it broadcasts')
        return Flow(self.cmap, front, front - r, self.shift, self.block)

    def axis(self, n: fx.Node, facts: GraphFacts, form: str='front') -> int:
        "The axis in the asked form, or refuse (asking for example_inputs when only the rank is missing)."
        f = self.at(n, facts)
        ax = f.front if form == 'front' else f.back
        if ax is None: _unknown_rank(n, facts)
        return ax

def _unknown_rank(n, facts):
    if facts.example_inputs is None and facts.shapes is None:
        refuse('needs-example-inputs', f'the rank of {facts.describe(n)} is not proven by the graph: pass example_inputs')
    refuse('rank', f'the rank of {facts.describe(n)} is unknown' + (f' (example_inputs failed: {facts.shapes_error})' if facts.shapes_error else ''))

def _missing(facts, what: str) -> tuple[str, str]:
    "(kind, text) for a fact the graph does not prove: example_inputs would show it, unless they were given."
    if facts.example_inputs is None and facts.shapes is None: return 'needs-example-inputs', f'{what}: pass example_inputs'
    return 'channels', what + (f' (example_inputs failed: {facts.shapes_error})' if facts.shapes_error else '')

def _norm(d: int, n: fx.Node, facts: GraphFacts, form: str='front') -> int:
    "A dim argument in the given form (needs the rank only when the forms differ)."
    if (d >= 0) == (form == 'front'): return d
    if (r := facts.rank(n)) is None: _unknown_rank(n, facts)
    return d + r if form == 'front' else d - r

@dataclass
class Move:
    "An op a BatchNorm's affine map crosses exactly (under `when`): how channels map from its output to its inputs (up) and back (down)."
    name: str  # what the report's `via` column says
    match: Callable  # (node, facts) -> bool
    up: Callable|None = None  # forward folds, BN after the op: (node, flow on its output, facts) -> [(input node, flow on it), ...]
    down: Callable|None = None  # backward folds, BN before the op: (node, input node, flow on it, facts) -> flow on the output
    when: Callable|None = None  # (node, s, t, facts) -> refuses unless exact for scales `s` and shifts `t` (None: no shift) crossing it
    positions: bool = False  # keeps every position where it is (may follow a flatten in a backward fold)

MOVES: list[Move] = []

def register_move(move: Move, # the move
                  modules: tuple=(), # module classes it matches: they are traced as leaves
                 ) -> Move:
    "Add a move to the table (also how fasterbn adds its own); later moves are tried first."
    MOVES.insert(0, move); _LEAF_MOVES.update(modules)
    return move

def find_move(n: fx.Node, facts: GraphFacts, direction: str) -> Move|None:
    "The first move in the table that matches `n` and can be crossed in `direction` ('up' or 'down')."
    return next((m for m in MOVES if getattr(m, direction) is not None and m.match(n, facts)), None)

def _same_up(n, flow, facts): return [(n.args[0], flow)]
def _same_down(n, x, flow, facts): return flow

# identity in eval mode
def _is_identity(n, facts):
    return (n.op == 'call_module' and type(facts.module(n)) is nn.Identity) or _meth(n, 'contiguous', 'clone')
def _is_dropout(n, facts):
    if n.op == 'call_module': return type(facts.module(n)) in _DROPOUTS
    return _fn(n, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout) and _arg(n, 2, 'training', True) is False
register_move(Move('identity', _is_identity, _same_up, _same_down, positions=True))
register_move(Move('dropout', _is_dropout, _same_up, _same_down, positions=True))
register_move(Move('batchnorm', lambda n, facts: n in facts.merged and _plain_output(facts.module(n)), _same_up, _same_down, positions=True))

# pooling: each output is a weighted mean (or the max) of one channel's values
def _pool(n, facts) -> tuple|None:
    "(kind, pooled dims, options) of a pooling node: kind 'avg' or 'max'."
    if n.op == 'call_module' and type(m := facts.module(n)) in _POOL_DIMS:
        kind = 'max' if 'Max' in type(m).__name__ else 'avg'
        if kind == 'max' and m.return_indices: return None
        return kind, _POOL_DIMS[type(m)], m
    if n.op == 'call_function' and n.target in _POOL_FNS:
        kind = 'max' if 'max' in n.target.__name__ else 'avg'
        if kind == 'max' and (_arg(n, 6 if 'adaptive' not in n.target.__name__ else 2, 'return_indices', False) is not False): return None
        return kind, _POOL_FNS[n.target], None
    return None

def _pool_options(n, m) -> tuple:
    "(padding, count_include_pad, divisor_override) of an average pooling node."
    if m is not None: return getattr(m, 'padding', 0), getattr(m, 'count_include_pad', True), getattr(m, 'divisor_override', None)
    if 'adaptive' in n.target.__name__: return 0, True, None
    return _arg(n, 3, 'padding', 0), _arg(n, 5, 'count_include_pad', True), _arg(n, 6, 'divisor_override', None)

def _pool_flow(n, flow, facts):
    _, k, _ = _pool(n, facts)
    if flow.axis(n, facts, 'back') >= -k: refuse('rank', f'{facts.describe(n)} pools the BatchNorm\'s channel axis')
    return flow

def _pool_when(n, s, t, facts):
    kind, _, m = _pool(n, facts)
    if kind == 'max':
        if (s < 0).any(): refuse('sign', f'{facts.describe(n)} takes a maximum, which commutes with the BatchNorm only where its scale is >= 0')
        return
    pad, include, divisor = _pool_options(n, m)
    if t is None or not (t != 0).any(): return
    if divisor is not None: refuse('padding', f'{facts.describe(n)} divides by a fixed divisor, so its output sees a multiple of the shift')
    if include and any(p != 0 for p in (pad if isinstance(pad, (tuple, list)) else (pad,))):
        refuse('padding', f'{facts.describe(n)} averages zero padding into its borders, which would see part of the shift')

register_move(Move('pool', lambda n, facts: _pool(n, facts) is not None,
                   lambda n, flow, facts: [(n.args[0], _pool_flow(n, flow, facts))],
                   lambda n, x, flow, facts: _pool_flow(n, flow, facts), _pool_when))

# means over dims that are not the channel axis (a global average pool written by hand)
def _is_mean(n, facts): return (_fn(n, torch.mean) or _meth(n, 'mean')) and _dims(_arg(n, 1, 'dim')) is not None and isinstance(_arg(n, 2, 'keepdim', False), bool)
def _mean_dims(n, x, facts) -> tuple:
    r = facts.rank(x)
    if r is None: _unknown_rank(x, facts)
    return tuple(sorted({d % r for d in _dims(_arg(n, 1, 'dim'))})), _arg(n, 2, 'keepdim', False)
def _mean_up(n, flow, facts):
    x = n.args[0]; dims, keep = _mean_dims(n, x, facts)
    out = flow.axis(n, facts)
    front = out if keep else next(i for i in range(facts.rank(x)) if i not in dims and out == i - sum(d < i for d in dims))
    if front in dims: refuse('rank', f'{facts.describe(n)} averages over the BatchNorm\'s channels')
    return [(x, Flow(flow.cmap, front, None, flow.shift))]
def _mean_down(n, x, flow, facts):
    dims, keep = _mean_dims(n, x, facts)
    front = flow.axis(x, facts)
    if front in dims: refuse('rank', f'{facts.describe(n)} averages over the BatchNorm\'s channels')
    return Flow(flow.cmap, front if keep else front - sum(d < front for d in dims), None, flow.shift)
register_move(Move('mean', _is_mean, _mean_up, _mean_down))

# transpose and permute move the channel axis
def _perm(n, facts, x) -> list[int]:
    "The permutation: output dim i is input dim perm[i]."
    r = facts.rank(x)
    if r is None: _unknown_rank(x, facts)
    if _meth(n, 'permute') or _fn(n, torch.permute):
        dims = n.args[1] if len(n.args) == 2 and isinstance(n.args[1], (tuple, list)) else n.args[1:] if _meth(n, 'permute') else _arg(n, 1, 'dims')
        return [d % r for d in dims]
    a, b = _arg(n, 1, 'dim0') % r, _arg(n, 2, 'dim1') % r
    perm = list(range(r)); perm[a], perm[b] = b, a
    return perm
def _is_transpose(n, facts):
    if _meth(n, 'permute') or _fn(n, torch.permute): return True
    return (_meth(n, 'transpose', 'swapaxes') or _fn(n, torch.transpose, torch.swapaxes)) and all(isinstance(a, int) for a in n.args[1:3])
register_move(Move('transpose', _is_transpose,
                   lambda n, flow, facts: [(n.args[0], Flow(flow.cmap, _perm(n, facts, n.args[0])[flow.axis(n, facts)], None, flow.shift))],
                   lambda n, x, flow, facts: Flow(flow.cmap, _perm(n, facts, x).index(flow.axis(x, facts)), None, flow.shift)))

# flatten: the channel axis survives if it is outside the flattened dims, or is their first dim (then each channel spans a block)
def _flat_dims(n, x, facts) -> tuple:
    start, end = _flatten_range(n, facts)
    if start < 0 or end < -1 or end >= 0 and end < start:
        if (r := facts.rank(x)) is None: _unknown_rank(x, facts)
        start, end = start % r, end % r
    return start, end
def _flatten_up(n, flow, facts):
    x = n.args[0]; start, end = _flat_dims(n, x, facts); o = flow.axis(n, facts)
    if end == -1:
        if (r := facts.rank(x)) is None: _unknown_rank(x, facts)
        end = r - 1
    front = o if o <= start else o + (end - start)   # at `start`: the channel is the outer flattened dim; the producer's channel count proves the rest are size 1
    return [(x, Flow(flow.cmap, front, None, flow.shift))]
def _flatten_down(n, x, flow, facts):
    start, end = _flat_dims(n, x, facts); f = flow.axis(x, facts)
    if f < start: return Flow(flow.cmap, f, None, flow.shift, flow.block)
    if f == start: return Flow(flow.cmap, start, None, flow.shift, None)   # each channel now spans a block of positions
    if end != -1 and f > end: return Flow(flow.cmap, f - (end - start), None, flow.shift, flow.block)
    refuse('rank', f'{facts.describe(n)} flattens the BatchNorm\'s channels into an outer dim')
register_move(Move('flatten', lambda n, facts: _flatten_range(n, facts) is not None and all(isinstance(d, int) for d in _flatten_range(n, facts)),
                   _flatten_up, _flatten_down))

# cat: along the channel axis each piece holds a slice of the channels; along another axis each piece holds them all
def _cat_pieces(n, flow, facts):
    pieces, dim = list(_cat_pieces_of(n)), _cat_dim(n)
    if len(set(pieces)) < len(pieces): refuse('shared-output', f'{facts.describe(n)} repeats a value: its channels would need two scales')
    form = 'back' if dim < 0 else 'front'
    ax = flow.axis(n, facts, form)
    if dim != ax: return [(p, Flow(flow.cmap, flow.front, flow.back, flow.shift)) for p in pieces]
    front = flow.axis(n, facts)
    out, start = [], 0
    for p in pieces:
        if (c := facts.channels(p, front)) is None:
            refuse(*_missing(facts, f'the channel count of {facts.describe(p)} inside {facts.describe(n)} is not proven'))
        out.append((p, Flow(flow.cmap[start:start + c], front, None, flow.shift))); start += c
    if start != len(flow.cmap): refuse('channels', f'{facts.describe(n)} has {start} channels, the BatchNorm {len(flow.cmap)}')
    return out
def _cat_down(n, x, flow, facts):
    pieces, dim = list(_cat_pieces_of(n)), _cat_dim(n)
    if pieces.count(x) != 1: refuse('shared-output', f'{facts.describe(n)} uses the BatchNorm\'s output {pieces.count(x)} times')
    front = flow.axis(x, facts)
    if _norm(dim, x, facts) != front: refuse('rank', f'{facts.describe(n)} joins along another axis than the BatchNorm\'s channels')
    sizes = [facts.channels(p, front) if p is not x else len(flow.cmap) for p in pieces]
    if None in sizes:
        refuse(*_missing(facts, f'cannot tell the channel offset inside {facts.describe(n)}'))
    i = pieces.index(x)
    cmap = torch.full((sum(sizes),), -1, dtype=torch.long); cmap[sum(sizes[:i]):sum(sizes[:i + 1])] = flow.cmap
    return Flow(cmap, front, None, flow.shift)
register_move(Move('cat', lambda n, facts: _fn(n, *_CATS) and isinstance(_cat_dim(n), int) and isinstance(_cat_pieces_of(n), (list, tuple)),
                   _cat_pieces, _cat_down))

# add and sub: every operand takes the scale, one operand the shift; broadcasting aligns dims from the back
_ADDS = {operator.add: 1, operator.iadd: 1, torch.add: 1, operator.sub: -1, operator.isub: -1, torch.sub: -1}
def _is_add(n, facts) -> bool:
    if n.op == 'call_function' and n.target in _ADDS: pass
    elif _meth(n, 'add', 'sub'): pass
    else: return False
    return len(n.args) == 2 and not n.kwargs and all(isinstance(a, fx.Node) for a in n.args)
def _sign(n) -> int: return _ADDS.get(n.target, 1) if n.op == 'call_function' else (1 if n.target == 'add' else -1)
def _add_up(n, flow, facts):
    a, b = n.args
    if a is b: refuse('shared-output', f'both sides of {facts.describe(n)} are the same value')
    back = flow.axis(n, facts, 'back')
    return [(a, Flow(flow.cmap, None, back, flow.shift)), (b, Flow(flow.cmap, None, back, False))]
register_move(Move('add', _is_add, _add_up))

# padding that copies values within a channel commutes with a per-channel map; constant padding only if the map fixes the constant
def _pad(n, facts) -> tuple|None:
    if n.op == 'call_module' and (m := facts.module(n)) is not None:
        name = type(m).__name__
        if type(m) not in _RANK_KEEPING_MODULES or 'Pad' not in name: return None
        return ('constant', getattr(m, 'value', 0.)) if name.startswith(('Zero', 'Constant')) else ('copy', None)
    if _fn(n, F.pad):
        mode = _arg(n, 2, 'mode', 'constant')
        return ('constant', _arg(n, 3, 'value', None) or 0.) if mode == 'constant' else ('copy', None)
    return None
def _pad_when(n, s, t, facts):
    mode, value = _pad(n, facts)
    if mode == 'constant' and not (s * value + (t if t is not None else 0) == value).all():
        refuse('padding', f'{facts.describe(n)} pads with {value}, which the BatchNorm would map to another value')
def _pad_flow(n, flow, facts):
    if flow.axis(n, facts, 'back') >= -(_pad_dims(n, facts)): refuse('rank', f'{facts.describe(n)} pads the BatchNorm\'s channel axis')
    return flow
def _pad_dims(n, facts) -> int:
    if n.op == 'call_module': return len(facts.module(n).padding) // 2
    return len(_arg(n, 1, 'pad')) // 2
register_move(Move('pad', lambda n, facts: _pad(n, facts) is not None,
                   lambda n, flow, facts: [(n.args[0], _pad_flow(n, flow, facts))],
                   lambda n, x, flow, facts: _pad_flow(n, flow, facts), _pad_when))

# resizing: nearest, (bi/tri)linear, bicubic and area interpolation weigh each channel's values with weights that sum to 1
def _is_resize(n, facts):
    if n.op == 'call_module': return type(facts.module(n)) in (nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)
    return _fn(n, F.interpolate) and isinstance(n.args[0], fx.Node)
def _resize_flow(n, flow, facts):
    if flow.axis(n, facts, 'back') >= -1 or flow.axis(n, facts) < 1: refuse('rank', f'{facts.describe(n)} resizes the BatchNorm\'s channel axis')
    return flow
register_move(Move('resize', _is_resize, lambda n, flow, facts: [(n.args[0], _resize_flow(n, flow, facts))],
                   lambda n, x, flow, facts: _resize_flow(n, flow, facts)))

# ---------------------------------------------------------------------------------------------------- decisions
@dataclass
class Part:
    "One layer's share of a fold."
    layer: str          # qualified name of the layer
    side: str           # 'out' (forward fold), 'in' (backward fold) or 'branch' (an identity branch added to a sibling conv)
    channel_map: Tensor # BatchNorm channel acting on each of the layer's channels on that side, -1 where none
    shift: bool = True  # whether this part takes the BatchNorm's shift (of an `add`, only one operand does)
    sign: int = 1       # for 'branch': whether the BatchNorm's branch is added (1) or subtracted (-1) next to the conv's

@dataclass
class Decision:
    "The verdict for one BatchNorm: the parts of its fold, or why it is not folded."
    bn: str                                          # qualified name
    parts: list[Part] = field(default_factory=list)  # empty when not folded (or merged into another BatchNorm)
    direction: str = ''                              # 'forward', 'backward' or 'branch'
    via: str = ''                                    # the moves folded across
    reason: Reason|None = None                       # why not folded
    merged_into: str = ''                            # the BatchNorm it was folded into (BatchNorm -> BatchNorm)
    affine: tuple|None = None                        # float64 (scale, shift) it folds: its own, composed with those merged into it
    @property
    def folded(self) -> bool: return bool(self.parts or self.merged_into)
    @property
    def layers(self) -> list[str]: return list(dict.fromkeys(p.layer for p in self.parts))

def _plain_output(bn) -> bool:
    "Is `bn`'s output, in eval mode, exactly its affine map (no activation after it)?"
    if (k := batchnorm_kind(bn)) is None: return False
    r = k.replacement(bn)
    return type(r) is nn.Identity or type(r) in _DROPOUTS or type(r) is nn.Sequential and all(type(m) in (nn.Identity, *_DROPOUTS) for m in r)

def _check_input_of(u: fx.Node, x: fx.Node, facts) -> None:
    if not u.args or u.args[0] is not x or _occurrences(u, x) != 1:
        refuse('nonlinear', f'the BatchNorm\'s output is not only the input of {facts.describe(u)}')

def _occurrences(u: fx.Node, x: fx.Node) -> int:
    from torch.utils._pytree import tree_flatten
    return sum(a is x for a in tree_flatten((u.args, u.kwargs))[0])

def bn_problem(bn: nn.Module, # the BatchNorm
               node: fx.Node, # its call in the graph
               facts: GraphFacts, # facts about the graph
              ) -> Reason|None: # why it can't be folded away, or None
    "Why this BatchNorm can't be folded whatever its neighbours (None if it can)."
    cls, kind = type(bn).__name__, batchnorm_kind(bn)
    if kind is None: return Reason('unknown-kind', f'{cls} redefines forward, so it may do more than normalize')
    if isinstance(bn, nn.modules.lazy.LazyModuleMixin) and bn.has_uninitialized_params():
        return Reason('not-ready', 'lazy BatchNorm not initialized yet: run one batch through the model first')
    if getattr(bn, 'running_mean', None) is None or getattr(bn, 'running_var', None) is None or not getattr(bn, 'track_running_stats', True):
        return Reason('batch-stats', 'uses batch statistics even in eval mode (track_running_stats=False)')
    if any(t.is_meta for t in [*bn._parameters.values(), *bn._buffers.values()] if t is not None):
        return Reason('not-ready', 'its statistics are on the meta device (no values yet): load real weights first')
    if bn.training: return Reason('training', 'in training mode, it uses batch statistics')
    s, t = facts.affine(node)
    if not bool(torch.isfinite(torch.stack([s, t])).all()):
        return Reason('bad-stats', 'non-finite statistics or parameters (NaN/inf, or running_var + eps <= 0)')
    return facts.use_problem(bn, node.target, replaced=True)

def layer_problem(layer: nn.Module, # the Conv/ConvTranspose/Linear
                  node: fx.Node, # its call in the graph
                  facts: GraphFacts, # facts about the graph
                 ) -> Reason|None: # why it can't take a fold, or None
    "Why `layer` can't take a fold whatever the BatchNorm (None if it can)."
    what = f'`{facts.qual(node.target)}` ({type(layer).__name__})'
    if layer_kind(layer) is None:
        return Reason('unknown-kind', f'{what} redefines {" and ".join(_overridden(layer))}, so it is not a plain {_torch_base(layer).__name__}')
    if isinstance(layer, nn.modules.lazy.LazyModuleMixin) and layer.has_uninitialized_params():
        return Reason('not-ready', f'{what} is lazy and not initialized: run one batch through the model first')
    if layer.weight.is_meta: return Reason('not-ready', f'{what} has its weights on the meta device: load real weights first')
    if not layer.weight.is_floating_point(): return Reason('not-ready', f'{what} has {layer.weight.dtype} weights')
    if parametrize.is_parametrized(layer): return Reason('parametrized', f'{what} has a parametrization (weight_norm, a pruning mask...)')
    return facts.use_problem(layer, node.target, replaced=False)

def _layer(n: fx.Node, facts) -> nn.Module|None:
    "The Conv/Linear that node `n` calls (known to fasterbn or not), or None."
    m = facts.module(n)
    return m if m is not None and is_fold_layer(m) else None

def _take_out(n: fx.Node, layer, flow: Flow, facts) -> Part:
    "The forward part for `layer`, whose output (node `n`) carries `flow`."
    if (why := layer_problem(layer, n, facts)): raise Refusal(why.kind, why.text)
    name, n_out = facts.qual(n.target), _out_channels(layer)
    if len(flow.cmap) == 1:   # size 1 along the BatchNorm's axis: every element is that channel, wherever the layer's channels are
        return Part(name, 'out', flow.cmap.expand(n_out).clone(), flow.shift)
    if (back := flow.axis(n, facts, 'back')) != _channel_axis(layer):
        refuse('rank', f'the BatchNorm normalizes dim {back} of the output of {facts.describe(n)}, whose channels are on dim {_channel_axis(layer)}')
    if len(flow.cmap) != n_out: refuse('channels', f'`{name}` has {n_out} output channels where the BatchNorm sees {len(flow.cmap)}')
    return Part(name, 'out', flow.cmap, flow.shift)

def _take_in(u: fx.Node, x: fx.Node, layer, flow: Flow, t: Tensor, facts) -> Part:
    "The backward part for `layer` (node `u`), whose input `x` carries `flow`."
    _check_input_of(u, x, facts)
    if (why := layer_problem(layer, u, facts)): raise Refusal(why.kind, why.text)
    name, n_in = facts.qual(u.target), _in_channels(layer)
    if len(flow.cmap) == 1 and flow.block == 1: cmap = flow.cmap.expand(n_in).clone()
    else:
        if (back := flow.axis(x, facts, 'back')) != _channel_axis(layer):
            refuse('rank', f'the BatchNorm\'s channels are dim {back} of the input of {facts.describe(u)}, which mixes dim {_channel_axis(layer)}')
        block = flow.block if flow.block is not None else n_in // len(flow.cmap) if n_in % len(flow.cmap) == 0 else 0
        if len(flow.cmap) * block != n_in: refuse('channels', f'`{name}` reads {n_in} channels where the BatchNorm gives {len(flow.cmap)}')
        cmap = flow.cmap.repeat_interleave(block)
    pads = layer_kind(layer).pads(layer)
    if pads == 'zeros' and bool((t[cmap[cmap >= 0]] != 0).any()):
        if isinstance(layer, _ConvTransposeNd):
            refuse('padding', f'`{name}` is a ConvTranspose: its borders and stride phases see the shift through different taps (exact only if the shift is 0)')
        refuse('padding', f'`{name}` pads with zeros, so its border outputs would see 0 instead of the BatchNorm\'s shift')
    return Part(name, 'in', cmap)

def _stop(n: fx.Node, facts, where: str) -> None:
    "Refuse at a node that is neither a layer nor a move."
    if n.op == 'output': refuse('no-layer', f'{where} the output' + (f' of `{facts.qual("")}`' if facts.prefix else ' of the model'))
    kind = 'no-layer' if n.op in ('placeholder', 'get_attr') or (n.op == 'call_module' and is_batchnorm(facts.module(n))) else 'nonlinear'
    refuse(kind, f'{where} {facts.describe(n)}, which is neither a Conv/Linear nor an op a BatchNorm can cross exactly')

def _bn_flow(node: fx.Node, bn, facts) -> Flow:
    "The flow at a BatchNorm: its channels on dim 1, where its kind is the affine map at the rank it sees."
    kind, x = batchnorm_kind(bn), node.args[0]
    r = facts.rank(x)
    if kind.ranks is not None and r not in kind.ranks:
        if r is None: _unknown_rank(x, facts)
        refuse('rank', f'{type(bn).__name__} is a per-channel map only on {"/".join(map(str, kind.ranks))}-D input; its input is {r}-D')
    return Flow(torch.arange(_bn_channels(bn)), 1, 1 - r if r is not None else None)

def plan_forward(node: fx.Node, bn: nn.Module, facts: GraphFacts) -> Decision:
    "A forward fold of `bn` into the layers that produce its input, through the moves of the table; refuses otherwise."
    s, t = facts.affine(node)
    parts, via, seen = [], [], set()
    stack = [(node.args[0], _bn_flow(node, bn, facts), node)]
    while stack:
        n, flow, consumer = stack.pop()
        if (others := [u for u in _value_users(n) if u is not consumer]) or _occurrences(consumer, n) != 1:
            refuse('shared-output', f'the output of {facts.describe(n)} is also used by {facts.users(n)}')
        if n in seen: refuse('shared-output', f'{facts.describe(n)} reaches the BatchNorm twice')
        seen.add(n)
        if (layer := _layer(n, facts)) is not None: parts.append(_take_out(n, layer, flow, facts)); continue
        move = find_move(n, facts, 'up')
        if move is None: _stop(n, facts, 'its input comes from')
        if move.when is not None:
            sel = flow.cmap[flow.cmap >= 0]
            move.when(n, s[sel], t[sel] if flow.shift else None, facts)
        via.append(move.name)
        stack.extend(reversed([(x, f, n) for x, f in move.up(n, flow, facts)]))   # depth first, inputs in order
    return Decision(facts.qual(node.target), parts, 'forward', ', '.join(dict.fromkeys(via)))

def plan_backward(node: fx.Node, bn: nn.Module, facts: GraphFacts) -> Decision:
    "A backward fold of `bn` into every layer that reads its output (through the moves of the table), all or none; refuses otherwise."
    s, t = facts.affine(node)
    parts, via, seen = [], [], set()
    stack = [(node, _bn_flow(node, bn, facts))]
    while stack:
        n, flow = stack.pop()
        if not (users := _value_users(n)): refuse('no-layer', f'the value {facts.describe(n)} is not used')
        for u in users:
            if u in seen: refuse('shared-output', f'{facts.describe(u)} reads the BatchNorm\'s output along two paths')
            seen.add(u)
            if (layer := _layer(u, facts)) is not None: parts.append(_take_in(u, n, layer, flow, t, facts)); continue
            move = find_move(u, facts, 'down')
            if move is None or flow.block != 1 and not move.positions: _stop(u, facts, 'its output goes to')
            if move.when is not None:
                sel = flow.cmap[flow.cmap >= 0]
                move.when(u, s[sel], t[sel], facts)
            via.append(move.name)
            stack.append((u, move.down(u, n, flow, facts)))
    return Decision(facts.qual(node.target), parts, 'backward', ', '.join(dict.fromkeys(via)))

# ---------------------------------------------------------------------------------------------------- identity branches and BatchNorm chains
def _centred(conv) -> bool:
    "Does output pixel p of `conv` read input pixel p at its kernel's centre (stride 1, odd kernel, 'same' padding)?"
    if isinstance(conv, _ConvTransposeNd) or any(s != 1 for s in conv.stride) or any(k % 2 == 0 for k in conv.kernel_size): return False
    if layer_kind(conv).pads is _same_pads: return True
    if conv.padding == 'same': return True
    return all(2 * p == d * (k - 1) for p, d, k in zip(conv.padding, conv.dilation, conv.kernel_size))

def _is_pass(n, facts) -> bool:
    "Is `n` the identity in eval mode (an `Identity`, a dropout, `.contiguous()`)?"
    return (m := find_move(n, facts, 'up')) is not None and m.name in ('identity', 'dropout')

def _sum_terms(root: fx.Node, facts) -> list[tuple]:
    "The terms of the sum `root` with their signs, through nested add/sub nodes (and eval identities) that only this sum reads."
    terms, stack = [], [(root, 1)]
    while stack:
        n, sign = stack.pop()
        for a, sa in zip(n.args, (1, _sign(n))):
            b, user = a, n
            while _is_pass(b, facts) and _value_users(b) == [user]: user, b = b, b.args[0]
            if _is_add(b, facts) and _value_users(b) == [user] and _occurrences(user, b) == 1: stack.append((b, sign * sa))
            else: terms.append((a, sign * sa))
    return terms

def plan_branch(node: fx.Node, bn: nn.Module, facts: GraphFacts, decisions: dict) -> Decision:
    "Fold an identity-branch BatchNorm, `bn(x) + conv(x)`, into its sibling conv: `bn(x)` is a conv with a centred identity kernel."
    if not _plain_output(bn): refuse('nonlinear', f'{type(bn).__name__} applies an activation after normalizing')
    x, n = node.args[0], node
    while len(us := _value_users(n)) == 1 and (m := find_move(us[0], facts, 'down')) is not None and m.name in ('identity', 'dropout'): n = us[0]
    if len(us) != 1 or not _is_add(us[0], facts): refuse('nonlinear', 'its output does not go into a sum')
    root = walk = us[0]
    while len(us := _value_users(walk)) == 1 and _occurrences(us[0], walk) == 1 and (_is_add(us[0], facts) or _is_pass(us[0], facts)):
        walk = us[0]
        if _is_add(walk, facts): root = walk
    terms = _sum_terms(root, facts)
    mine = [sg for a, sg in terms if a is n]
    if len(mine) != 1: refuse('shared-output', 'the sum reads the BatchNorm twice')
    flow = _bn_flow(node, bn, facts)
    why = None
    for term, sign in terms:
        if term is n: continue
        try: return _branch_into(node, bn, x, term, mine[0] * sign, flow, facts, decisions)
        except Refusal as e: why = why or e.reason
    raise Refusal(why.kind if why else 'no-layer', f'no sibling conv reads the same input: {why.text}' if why else 'no sibling conv reads the same input')

def _branch_into(node, bn, x, term, sign, flow, facts, decisions) -> Decision:
    n, folded_bn = term, None
    while True:
        if len(_value_users(n)) != 1: refuse('shared-output', f'the output of {facts.describe(n)} is also used by {facts.users(n)}')
        if (layer := _layer(n, facts)) is not None: break
        if n.op == 'call_module' and is_batchnorm(facts.module(n)) and folded_bn is None:
            d = decisions.get(n)
            if d is None or d.direction != 'forward' or len(d.parts) != 1 or d.parts[0].side != 'out':
                refuse('nonlinear', f'{facts.describe(n)} is not folded into the sibling conv')
            folded_bn = d; n = n.args[0]; continue
        move = find_move(n, facts, 'up')
        if move is None or move.name not in ('identity', 'dropout'): _stop(n, facts, 'the sibling term comes from')
        n = n.args[0]
    if n.args[0] is not x: refuse('no-layer', f'{facts.describe(n)} does not read the BatchNorm\'s input')
    if folded_bn is not None and (folded_bn.parts[0].layer != facts.qual(n.target) or not torch.equal(folded_bn.parts[0].channel_map, torch.arange(_out_channels(layer)))):
        refuse('nonlinear', f'the BatchNorm after {facts.describe(n)} does not fold into it whole')
    if (why := layer_problem(layer, n, facts)): raise Refusal(why.kind, why.text)
    name, c = facts.qual(n.target), len(flow.cmap)
    if isinstance(layer, nn.Linear) or not _centred(layer):
        refuse('no-layer', f'`{name}` is not a stride-1 conv with an odd kernel and centred (same) padding')
    if layer.in_channels != c or layer.out_channels != c: refuse('channels', f'`{name}` maps {layer.in_channels} to {layer.out_channels} channels, the BatchNorm has {c}')
    if flow.axis(x, facts, 'back') != _channel_axis(layer): refuse('rank', f'the BatchNorm\'s channels are not the channels of `{name}`')
    return Decision(facts.qual(node.target), [Part(name, 'branch', flow.cmap, True, sign)], 'branch', 'add' if sign > 0 else 'sub')

def _merge_chains(nodes: list, problems: dict, facts) -> None:
    "BatchNorm -> BatchNorm: the second folds into the first (two affine maps compose into one), recorded in `facts.merged`."
    for node in nodes:
        if problems.get(node) is not None: continue
        n = node.args[0]
        while (m := find_move(n, facts, 'up')) is not None and m.name in ('identity', 'dropout', 'batchnorm') and len(_value_users(n)) == 1: n = n.args[0]
        if n.op != 'call_module' or not is_batchnorm(b1 := facts.module(n)) or problems.get(n, True) is not None: continue
        if len(_value_users(n)) != 1 or not _plain_output(b1) or _bn_channels(b1) != _bn_channels(facts.module(node)): continue
        try: _bn_flow(node, facts.module(node), facts); _bn_flow(n, b1, facts)
        except Refusal: continue
        rep = facts.merged.get(n, n)
        (s1, t1), (s2, t2) = facts.affine(rep), facts.affine(node)
        facts.merged[node], facts.affines[rep] = rep, (s2 * s1, s2 * t1 + t2)

def plan_folds(facts: GraphFacts, # facts about the traced root
               backward: bool=True, # also fold BatchNorms into the layers after them
              ) -> list[Decision]:
    "One `Decision` per BatchNorm called in the graph: forward where exact, else backward, else into a sibling conv; or why not."
    nodes = list(dict.fromkeys(n for n in facts.graph.nodes if n.op == 'call_module' and is_batchnorm(facts.module(n))))
    first = {}
    for n in nodes: first.setdefault(n.target, n)
    nodes = list(first.values())
    problems = {n: bn_problem(facts.module(n), n, facts) for n in nodes}
    _merge_chains(nodes, problems, facts)
    decided = {}
    for n in nodes:
        if problems[n] is not None: decided[n] = Decision(facts.qual(n.target), reason=problems[n]); continue
        if n in facts.merged: continue
        bn = facts.module(n)
        try: decided[n] = plan_forward(n, bn, facts); continue
        except Refusal as e: fwd = e.reason
        bwd = None
        if backward and _plain_output(bn):
            try: decided[n] = plan_backward(n, bn, facts); continue
            except Refusal as e: bwd = e.reason
        decided[n] = Decision(facts.qual(n.target), reason=_combine(fwd, bwd))
    for n in nodes:   # identity branches last: the sibling conv may take its own BatchNorm first
        if n in facts.merged or decided[n].folded or problems[n] is not None: continue
        try: decided[n] = plan_branch(n, facts.module(n), facts, decided)
        except Refusal: pass
    for n in nodes:   # merged BatchNorms go wherever their chain's first BatchNorm went
        if (rep := facts.merged.get(n)) is not None:
            d = decided[rep]
            decided[n] = Decision(facts.qual(n.target), [], d.direction if d.folded else 'forward', 'batchnorm', merged_into=facts.qual(rep.target))
    for n in nodes:
        if problems[n] is None: decided[n].affine = facts.affine(n)
    return [decided[n] for n in nodes]

def _combine(fwd: Reason, bwd: Reason|None) -> Reason:
    "One reason from the forward and backward refusals: the backward one when it says more (shapes, padding, uses)."
    if bwd is None: return Reason(fwd.kind, f'forward: {fwd.text}')
    kind = fwd.kind if fwd.kind not in ('nonlinear', 'no-layer', 'shared-output') or bwd.kind in ('nonlinear', 'no-layer', 'shared-output') else bwd.kind
    return Reason(kind, f'forward: {fwd.text}; backward: {bwd.text}')
