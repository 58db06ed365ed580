"""What the model-zoo sweeps share (tools/zoo.py: timm and torchvision; tools/eco_zoo.py: the other libraries people train with).

Comparing outputs (`tensors`, `rel_error`, `outputs`, `compare`), fx `fuse` as a baseline (`fx_fuse`), the float64 noise floor
(`perturbed`), a short kind and the surroundings of each not-folded reason (`row_kind`, `pattern`), forked workers with time
and memory limits (`run_pool`), and small text helpers for the Markdown reports."""
import math, multiprocessing as mp, os, re, resource, time
from multiprocessing.connection import wait
import torch, torch.nn as nn, torch.fx as fx
from torch.fx.experimental.optimization import fuse

TOL, SEED = 1e-9, 0   # relative float64 error a fold may have; the seed of every model and input

def shape_of(x) -> str:
    if isinstance(x, torch.Tensor): return 'x'.join(map(str, x.shape))
    return '[' + ', '.join(shape_of(t) for t in x) + ']' if isinstance(x, (list, tuple)) else type(x).__name__

def tensors(out) -> list:
    "Every tensor in a model output (tensor, list/tuple, dict, or an object holding tensors)."
    if isinstance(out, torch.Tensor): return [out]
    if isinstance(out, dict): return [t for v in out.values() for t in tensors(v)]
    if isinstance(out, (list, tuple)): return [t for v in out for t in tensors(v)]
    return [t for v in vars(out).values() for t in tensors(v)] if hasattr(out, '__dict__') else []

def rel_error(out, ref) -> float:
    "Max over output tensors of max|out - ref| / max|ref| (NaN/inf count as equal where both agree)."
    a, b = tensors(out), tensors(ref)
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)): return math.inf
    worst = 0.
    for x, y in zip(a, b):
        x, y = x.double(), y.double()
        diff = torch.where((x == y) | (x.isnan() & y.isnan()), 0., (x - y).abs())
        scale = y[y.isfinite()].abs().max().item() if y.isfinite().any() else 0.
        worst = max(worst, diff.max().item() / scale if scale else diff.max().item()) if diff.numel() else worst
    return worst

@torch.no_grad()
def outputs(model, x, probes=()) -> dict:
    "{'output': the model's output} plus the outputs of the `probes` submodules it has (hooked for this call only: fasterbn leaves hooked modules alone)."
    seen, hooks = {}, []
    for name in probes:
        try: sub = model.get_submodule(name)
        except AttributeError: continue
        hooks.append(sub.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o)))
    try: out = model(*x)
    finally:
        for h in hooks: h.remove()
    return {'output': out, **seen}

def compare(out: dict, ref: dict) -> float:
    "`rel_error` over the probed stages when there are any, else over the output."
    keys = [k for k in ref if k != 'output'] or ['output']
    return rel_error([out.get(k) for k in keys], [ref[k] for k in keys]) if all(k in out for k in keys) else math.inf

def first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f'{type(e).__name__}: {msg[0] if msg else ""}'[:300]

def bn_refs(gm: fx.GraphModule, bn_names: set) -> tuple[set, int]:
    "BatchNorms a graph still uses: called as modules or with their tensors read (inlined), and functional calls of no BatchNorm module."
    used, loose = set(), 0
    for n in gm.graph.nodes:
        if n.op == 'call_module' and n.target in bn_names: used.add(n.target)
        if n.op == 'get_attr' and (owner := n.target.rpartition('.')[0]) in bn_names: used.add(owner)
    for n in gm.graph.nodes:
        if n.op == 'call_function' and n.target in (nn.functional.batch_norm, torch.batch_norm):
            owners = {a.target.rpartition('.')[0] for a in n.all_input_nodes if a.op == 'get_attr'}
            loose += not (owners & used)
    return used, loose

def fx_fuse(model, bn_names):
    "fx `fuse`: (BatchNorms it folded, the fused module or None, error)."
    try:
        gm = fx.symbolic_trace(model)
        before, _ = bn_refs(gm, bn_names)
        fused = fuse(gm, no_trace=True)   # fuse deep-copies `gm` and traces nothing again
        after, loose = bn_refs(fused, bn_names)
        return max(len(before) - len(after) - loose, 0), fused, ''
    except Exception as e: return 0, None, first_line(e)

@torch.no_grad()
def perturbed(model: nn.Module, seed: int=SEED) -> nn.Module:
    "`model` with every floating-point parameter and buffer multiplied by (1 + 2**-53 * N(0, 1)): about one rounding error each."
    g = torch.Generator().manual_seed(seed + 1)
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point(): t.mul_(1 + 2**-53 * torch.randn(t.shape, generator=g, dtype=t.dtype))
    return model

def is_oom(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or "can't allocate memory" in str(e)

# ---------------------------------------------------------------- why not folded: a short kind

_KIND_TEXT = [  # (substring of the reason, kind), first match wins; for reports that have no `kind` field yet
    ('torch.fx could not trace', 'untraceable'), ('never called', 'not-called'), ('may do more than normalize', 'bn-subclass'),
    ('track_running_stats', 'batch-stats'), ('training mode', 'training'), ('non-finite', 'non-finite'), ('overflow', 'overflow'),
    ('pass example_inputs', 'needs-example-inputs'), ('so it is not a plain', 'layer-subclass'), ('pads with zeros', 'zero-padding'),
    ('is a ConvTranspose', 'convtranspose-shift'), ('-D tensor', 'linear-rank'), ('-D: Linear', 'linear-rank'),
    ('sites', 'multi-call'), ('read directly', 'read-directly'), ('several names', 'aliased'), ('shares', 'shared-tensors'),
    ('parametrization', 'parametrized'), ('hooks', 'hooks'), ('lazy', 'lazy'), ('across `cat`', 'cat'), ('across `add`', 'add'),
    ('is also used by', 'shared-output'), ('used by several nodes', 'shared-output'), ('used by nothing', 'unused-output'),
    ('channels, `', 'channel-mismatch'), ('not a multiple', 'channel-mismatch'), ('does not flatten', 'reshape'),
    ('a flattened tensor', 'reshape'), ('`cat`', 'cat')]
_PRIORITY = ['needs-example-inputs', 'layer-subclass', 'zero-padding', 'convtranspose-shift', 'linear-rank', 'multi-call',
             'read-directly', 'aliased', 'shared-tensors', 'parametrized', 'hooks', 'lazy', 'channel-mismatch', 'cat', 'add',
             'shared-output', 'unused-output']
_ACT = re.compile(r'relu|gelu|silu|swish|sigmoid|tanh|mish|elu|softplus|hardtanh|glu|activation|act\d*$|^act', re.I)

def _neighbour(text: str) -> str|None:
    "The op named in 'comes from X' / 'goes to X': a module's class, a function's or a method's name."
    m = re.search(r'(?:comes from|goes to|not the input of) (.*?)(?:, not|$)', text)
    if not m: return None
    what = m.group(1)
    if what.startswith('the input'): return 'input'
    if cls := re.search(r'\(([A-Za-z_][\w.]*)\)$', what): return cls.group(1)
    name = re.match(r'`\.?([\w.]+)', what)
    return name.group(1).removesuffix('()') if name else what

def _side(text: str) -> tuple[str, str]:
    "(kind, op) of one side of a reason; op names the module class or function involved, e.g. ('shared-output', 'shared-output(ReLU)')."
    for sub, kind in _KIND_TEXT:
        if sub in text:
            cls = re.search(r'`[^`]*` \(([A-Za-z_]\w*)\)', text)
            return kind, f'{kind}({cls.group(1)})' if cls else kind
    op = _neighbour(text) or 'other'
    if op == 'input': return 'model-input', 'input'
    if _ACT.search(op): return 'activation', op
    if 'pool' in op.lower() or op in ('mean', 'adaptive_avg_pool2d'): return 'pool', op
    if op in ('flatten', 'view', 'reshape', 'reshape_as', 'permute', 'transpose', 'squeeze', 'unsqueeze', 'contiguous', 'getitem', 'chunk', 'split', 'roll'):
        return 'reshape', op
    if op in ('add', 'iadd', 'sub', 'mul', 'imul', 'truediv', 'matmul'): return 'arithmetic', op
    if 'BatchNorm' in op or 'Norm' in op: return 'norm', op
    return 'other-op', op

def _sides(reason: str) -> list[tuple[str, str]]:
    if reason.startswith('forward: '):
        fwd, _, bwd = reason[len('forward: '):].partition('; backward: ')
        return [_side(fwd.split('. To fold it')[0])] + ([_side(bwd.split('. To fold it')[0])] if bwd else [])
    return [_side(reason)]

def reason_kind(reason: str) -> str:
    "A short category for a not-folded reason: the most specific of its forward and backward blockers."
    kinds = [k for k, _ in _sides(reason)]
    return min(kinds, key=lambda k: _PRIORITY.index(k) if k in _PRIORITY else len(_PRIORITY))

def pattern(reason: str) -> str:
    "What surrounds the BatchNorm, e.g. 'cat -> BN -> ReLU' (forward blocker before, backward blocker after)."
    sides = _sides(reason)
    if not reason.startswith('forward: '): return sides[0][1]
    return f'{sides[0][1]} -> BN' + (f' -> {sides[1][1]}' if len(sides) > 1 else '')

def row_kind(row) -> str: return getattr(row, 'kind', '') or reason_kind(row.reason)

# ---------------------------------------------------------------- workers

def room_for(params: int):
    """Raise this worker's cap for a model whose float64 pass needs more than `--memory`: three float64 sets of its weights (the
    model, the folded weights computed before any is written, which an in-place fold must keep until it can no longer be undone,
    and slack) plus 4 GiB. Only regnet_y_128gf (644 M parameters) needs it; the cap exists against runaway models, not large ones."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    vm = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024
    need = vm + 3 * 8 * params + 4 * 2**30
    if soft != resource.RLIM_INFINITY and need > soft:
        resource.setrlimit(resource.RLIMIT_AS, (need if hard == resource.RLIM_INFINITY else min(need, hard), hard))

def _child(fn, arg, conn, memory_gb):
    torch.set_num_threads(1)
    if memory_gb:   # a cap on this worker's address space, above what the imports already mapped (the hard limit stays: see `room_for`)
        vm = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + int(memory_gb * 2**30), resource.getrlimit(resource.RLIMIT_AS)[1]))
    try: res = {'value': fn(arg)}
    except BaseException as e: res = {'error': first_line(e)}
    conn.send(res); conn.close()
    os._exit(0)   # skip the parent's atexit handlers

def run_pool(tasks, jobs, timeout, memory_gb):
    "Run (fn, arg) tasks in forked processes, `jobs` at a time; yield (task, {'value': ...} | {'error'|'timeout'|'died': ...})."
    ctx, pending, running = mp.get_context('fork'), list(tasks), {}
    while pending or running:
        while pending and len(running) < jobs:
            task = pending.pop(0)
            r, w = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_child, args=(*task, w, memory_gb), daemon=True); p.start(); w.close()
            running[p] = (task, r, time.monotonic())
        wait([r for _, r, _ in running.values()] + [p.sentinel for p in running], timeout=1)
        for p, (task, r, t0) in list(running.items()):
            if r.poll(): res = r.recv()
            elif not p.is_alive(): res = {'died': f'process exited with code {p.exitcode}'}
            elif time.monotonic() - t0 > timeout: p.kill(); res = {'timeout': f'over {timeout} s'}
            else: continue
            p.join(); r.close(); del running[p]
            yield task, res

def pct(a, b): return f'{100 * a / b:.1f}%' if b else '-'

def clip(s: str, n: int) -> str:
    "At most about `n` characters, cut between words and outside code spans."
    if len(s) <= n: return s
    s = s[:n].rsplit(' ', 1)[0]
    if s.count('`') % 2: s = s[:s.rindex('`')].rstrip()
    return s + ' …'

def fmt_err(e) -> str: return f'{e:.1e}' if isinstance(e, (int, float)) else str(e)
def md(s: str) -> str: return s.replace('|', '\\|').replace('\n', ' ')
