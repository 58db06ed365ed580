"""`BN_Folder().fold(model)`: trace, plan every fold, check it, then apply it all at once to a copy (or in place), and report on every BatchNorm.

Docs: https://fasterbn.github.io/fasterbn/folder.html.md"""

from __future__ import annotations
import copy, gc, math, statistics, time
from contextlib import contextmanager
from collections import Counter, defaultdict
from dataclasses import dataclass
import torch, torch.nn as nn, torch.fx as fx
from fastcore.basics import store_attr, patch
from .fold_math import fold_layer, new_parameter, cast_like
from .graph import (preserved, GraphFacts, ModelFacts, Outside, Recorder, Decision, Reason, REASON_KINDS, trace, plan_folds, is_batchnorm,
                    is_fold_layer, batchnorm_kind, bn_replacement, _in_channels, _out_channels, _first_line)
from torch.nn.modules.batchnorm import _BatchNorm

# ---------------------------------------------------------------------------------------------------- the report
@dataclass
class FoldRow:
    "One BatchNorm's line in the report."
    bn: str              # qualified name in the model
    folded: bool         # whether it was folded
    into: str = ''       # layer(s) it went into
    direction: str = ''  # 'forward' (BN after the layer), 'backward' (BN before it) or 'branch' (BN beside it, in a sum)
    via: str = ''        # the ops it was folded across
    reason: str = ''     # why it was not folded
    kind: str = ''       # the kind of reason, one of `REASON_KINDS` (empty when folded)
    @property
    def advice(self) -> str: return REASON_KINDS.get(self.kind, '')

class FoldReport:
    "What a fold did to each BatchNorm, plus the modules torch.fx could not trace."
    def __init__(self, rows: list[FoldRow]=(), # one per BatchNorm, in model order
                 untraceable: dict|None=None, # qualified module name -> fx's error
                 notes: list[str]=()): # anything else the user should know
        self.rows, self.untraceable, self.notes = list(rows), dict(untraceable or {}), list(notes)
    @property
    def folded(self) -> list[FoldRow]: return [r for r in self.rows if r.folded]
    @property
    def not_folded(self) -> list[FoldRow]: return [r for r in self.rows if not r.folded]
    @property
    def n_folded(self) -> int: return len(self.folded)
    @property
    def n_not_folded(self) -> int: return len(self.not_folded)
    def __getitem__(self, bn: str) -> FoldRow:
        "The row of the BatchNorm named `bn` (KeyError if the model has none)."
        for r in self.rows:
            if r.bn == bn: return r
        raise KeyError(bn)
    def __len__(self): return len(self.rows)
    def by_kind(self) -> dict[str, list[FoldRow]]:
        "The rows of BatchNorms not folded, grouped by the kind of reason, largest group first."
        groups = defaultdict(list)
        for r in self.not_folded: groups[r.kind].append(r)
        return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))
    def summary(self) -> str: return f'BN layers folded: {self.n_folded}, not folded: {self.n_not_folded}'

    def table(self) -> str:
        "The report as plain text: one line per BatchNorm, then what to do about each kind of reason."
        lines = [self.summary()]
        if self.rows:
            w = max(len(r.bn) for r in self.rows)
            for r in self.rows:
                what = f'-> {r.into} ({r.direction}{", via " + r.via if r.via else ""})' if r.folded else f'not folded [{r.kind}]: {r.reason}'
                lines.append(f'  {r.bn:<{w}}  {what}')
        lines += [f'untraceable: `{k or "<model>"}`: {v}' for k, v in self.untraceable.items()]
        lines += [f'to fold [{k}]: {REASON_KINDS[k]}' for k in self.by_kind() if REASON_KINDS.get(k)]
        return '\n'.join(lines + [f'note: {n}' for n in self.notes])
    __repr__ = table

    def _repr_markdown_(self):
        def cell(s): return str(s).replace('|', '\\|')
        rows = [f'| `{r.bn}` | {"✓" if r.folded else "✗"} | {cell(r.into)} | {r.direction} | {cell(r.via)} | {r.kind} | {cell(r.reason)} |' for r in self.rows]
        todo = [f'- **{k}** ({len(v)}): {REASON_KINDS[k]}' for k, v in self.by_kind().items() if REASON_KINDS.get(k)]
        extra = [f'- untraceable `{k or "<model>"}`: {cell(v)}' for k, v in self.untraceable.items()] + [f'- {cell(n)}' for n in self.notes]
        return '\n'.join([f'**{self.summary()}**\n', '| BatchNorm | folded | into | direction | via | kind | reason |',
                          '|---|---|---|---|---|---|---|', *rows, '', *todo, *extra])

# ---------------------------------------------------------------------------------------------------- planning over the model
def _scripted_bn(m: nn.Module) -> bool:
    "Is `m` a BatchNorm inside a `torch.jit.script`ed module (where it is a ScriptModule that remembers its class name)?"
    return isinstance(m, torch.jit.ScriptModule) and 'BatchNorm' in getattr(m, 'original_name', '')

def _needs_own_trace(m: nn.Module) -> bool:
    "Does `m` hold a BatchNorm below it that only a trace rooted at `m` can reach?"
    return not is_batchnorm(m) and not is_fold_layer(m) and any(is_batchnorm(x) or _scripted_bn(x) for x in m.modules())

def _unwrap(model: nn.Module) -> nn.Module:
    "The module inside `DataParallel`, `DistributedDataParallel` and `torch.compile` wrappers."
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)): model = model.module
        elif hasattr(model, '_orig_mod') and isinstance(model._orig_mod, nn.Module): model = model._orig_mod
        else: return model

def _as_inputs(example_inputs) -> tuple|None:
    "`example_inputs` as a tuple of positional inputs, or a clear error."
    if example_inputs is None or isinstance(example_inputs, tuple): return example_inputs
    if isinstance(example_inputs, torch.Tensor): return (example_inputs,)
    if isinstance(example_inputs, list): return tuple(example_inputs)
    if isinstance(example_inputs, dict):
        raise TypeError('example_inputs is a dict: pass the positional inputs of forward as a tuple (keyword inputs are not supported)')
    raise TypeError(f'example_inputs must be a tensor or a tuple of the positional inputs of forward, not {type(example_inputs).__name__}')

@contextmanager
def _collector_paused():
    "Pause Python's cyclic garbage collector: a fold allocates many small objects (graph nodes, copied modules), and its passes cost a quarter of the time."
    enabled = gc.isenabled(); gc.disable()
    try: yield
    finally:
        if enabled: gc.enable()

class BN_Folder:
    "Folds every BatchNorm of a model that can be folded exactly into a neighbouring Conv, ConvTranspose or Linear."
    def __init__(self, backward: bool=True, # also fold a BatchNorm into the layer *after* it, where exact
                 check: bool=True, # with example_inputs: compare against a float64 copy, and cancel folds that change more than rounding
                 verbose: bool=False, # print the report after each fold
                ):
        store_attr()
        self.report = None

    def fold(self, model: nn.Module, # the model to fold (wrappers such as DDP and `torch.compile` are looked through)
             inplace: bool=False, # edit `model` itself instead of a deep copy
             example_inputs=None, # a tensor or tuple of forward's positional inputs: shapes, and evidence of uses the graph can't show
             verbose: bool|None=None, # print the report (default: the folder's `verbose`)
            ) -> nn.Module: # the folded model, in eval mode
        "Fold `model`'s BatchNorms; the report is in `self.report`."
        if not isinstance(model, nn.Module): raise TypeError(f'BN_Folder.fold needs an nn.Module, got {type(model).__name__}')
        with _collector_paused(): return self._fold(model, inplace, _as_inputs(example_inputs), verbose)

    def _fold(self, model, inplace, example_inputs, verbose):
        model = _unwrap(model)
        modes = {m: m.training for m in model.modules()}
        try:   # plan and compute on `model` itself, in eval mode: tracing and runs leave no trace, and nothing is edited yet
            model.eval()
            decisions, untraceable, notes, roots = self._plan(model, example_inputs)
            updates = self._compute(model, decisions)
            refs = self._references(model, decisions, roots, notes) if self.check else {}
            if isinstance(model, torch.jit.ScriptModule): work = model   # nothing in it can be folded: the report says why
            elif not inplace:   # the copy takes the new weights instead of copies of the old ones
                memo = {}
                if not refs:   # (a check may undo folds in the copy: then it must start as a true copy)
                    memo = {id(getattr(model.get_submodule(n), a)): v for n, u in updates.items() for a, v in u.items()
                            if isinstance(getattr(model.get_submodule(n), a, None), torch.Tensor)}
                    for d in decisions:   # and each folded BatchNorm's replacement instead of a copy of the BatchNorm
                        if d.folded and d.bn not in updates:
                            memo[id(model.get_submodule(d.bn))] = copy.deepcopy(bn_replacement(model.get_submodule(d.bn), d.direction), memo)
                try: work = copy.deepcopy(model, memo)
                except Exception as e:
                    raise TypeError(f'cannot deep-copy the model ({_first_line(e)}): fold a copy you make, or pass inplace=True') from None
            else: work = model
            journal = self._apply(work, decisions, updates)
            if refs: self._verify(model, work, decisions, updates, refs, journal)
        except BaseException:
            for m, mode in modes.items(): m.train(mode)
            raise
        if not inplace:
            for m, mode in modes.items(): m.train(mode)
        work.eval()
        self.report = self._report(work, decisions, untraceable, notes)
        if self.verbose if verbose is None else verbose: print(self.report)
        return work

@patch
@torch.no_grad()
def _plan(self: BN_Folder, model, example_inputs):
    "Decisions for every traced BatchNorm, the untraceable modules, and notes."
    decisions, untraceable, notes = [], {}, []
    roots = []   # (name, inputs) of the outermost traced roots with inputs: where a fold can be checked
    if isinstance(model, torch.jit.ScriptModule):
        untraceable[''] = 'the model is scripted (torch.jit.script)'
        return decisions, untraceable, notes, roots
    facts_of_model = ModelFacts.of(model)
    recorder = None
    if example_inputs is not None:
        recorder = Recorder(model, example_inputs)
        if recorder.error: raise ValueError(f'example_inputs do not run through the model: {recorder.error}')
    def visit(root, prefix, outside):
        name = prefix.rstrip('.')
        if isinstance(root, torch.jit.ScriptModule): untraceable[name] = 'scripted (torch.jit.script)'; return
        graph = None
        if type(root).forward is not nn.Module.forward:   # a ModuleList/ModuleDict is never called: its parent's evidence stands
            try: graph = trace(root)
            except Exception as e: untraceable[name] = _first_line(e)
        if graph is None:
            blind = outside.blind if type(root).forward is nn.Module.forward else name
            for child_name, child in root.named_children():
                if _needs_own_trace(child):
                    q = f'{prefix}{child_name}'
                    visit(child, q + '.', Outside(q, outside.calls, outside.reads, blind, recorder, checked=outside.checked))
            return
        inputs = example_inputs if not prefix else recorder.inputs.get(name) if recorder else None
        facts = GraphFacts(root, graph, inputs, facts_of_model, outside, prefix)
        planned = plan_folds(facts, backward=self.backward)
        if facts.shapes_error: notes.append(f'shapes of `{name or "<model>"}` could not be propagated on example_inputs ({facts.shapes_error})')
        decisions.extend(planned)
        if inputs is not None and not outside.checked: roots.append((name, inputs))
        opaque = dict.fromkeys(n.target for n in graph.nodes if n.op == 'call_module' and _needs_own_trace(facts.module(n)))
        for target in opaque:   # modules the trace kept whole (hooked, scripted) are planned inside, as roots of their own
            q = facts.qual(target)
            calls = outside.calls + Counter({facts.qual(t): c for t, c in facts.calls.items() if t.startswith(target + '.')})
            reads = outside.reads | {facts.qual(t) for t in facts.reads if t.startswith(target + '.')}
            visit(facts.modules[target], q + '.', Outside(q, calls, reads, outside.blind, recorder, checked=outside.checked or inputs is not None))
    visit(model, '', Outside('', recorder=recorder))
    return decisions, untraceable, notes, roots

# ---------------------------------------------------------------------------------------------------- computing the new weights
def _side_vectors(parts, n):
    "Per-channel (s, t) over `n` channels of one side of a layer, identity where no part acts."
    s, t, owner = torch.ones(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.bool)
    for p, (bs, bt) in parts:
        m = p.channel_map >= 0
        if (owner & m).any(): raise RuntimeError('two BatchNorms folded into the same channels')  # the planner never does this
        owner |= m
        s[m] = bs[p.channel_map[m]]
        if p.shift: t[m] = bt[p.channel_map[m]]
    return s, t

def _magnitude_problem(mags: torch.Tensor, # largest |value| per output channel, float64
                       dtype: torch.dtype, # the dtype the values are cast to
                       what: str, # what they are, for the message
                       underflow: bool=True, # also refuse output channels pushed wholly below the normal range
                      ) -> str|None:
    "Why values would not survive a cast to `dtype`: not finite, overflow, or whole output channels turned subnormal (lost precision)."
    info, top = torch.finfo(dtype), float(mags.max()) if mags.numel() else 0.
    if not math.isfinite(top): return f'{what} would not be finite'
    if top > info.max: return f'{what} overflow {dtype}'
    if underflow and bool(((mags > 0) & (mags < info.tiny)).any()):
        return f'{what} underflow {dtype}: a tiny BatchNorm scale pushes whole output channels below its normal range, where they lose precision'
    return None

def _branch_vectors(parts, n):
    "Per-channel (s, t) of the identity branches added to a conv, signs included."
    s, t = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    for p, (bs, bt) in parts:
        m = p.channel_map >= 0
        s[m] += p.sign * bs[p.channel_map[m]]; t[m] += p.sign * bt[p.channel_map[m]]
    return s, t

@patch
def _compute(self: BN_Folder, model, decisions, cancel: bool=True):
    "New tensors of every module a fold changes (layers, and BatchNorms others merged into), from `model`'s values; cancels folds that don't survive the cast."
    while True:
        by_layer = defaultdict(list)
        for d in decisions:
            for p in d.parts: by_layer[p.layer].append((p, d.affine))
        updates, bad = {}, None
        for name, parts in by_layer.items():
            layer = model.get_submodule(name)
            ins, outs, branches = ([x for x in parts if x[0].side == side] for side in ('in', 'out', 'branch'))
            s_in, t_in = _side_vectors(ins, _in_channels(layer)) if ins else (None, None)
            s_out, t_out = _side_vectors(outs, _out_channels(layer)) if outs else (None, None)
            c_s, c_t = _branch_vectors(branches, _out_channels(layer)) if branches else (None, None)
            w, b, mags = fold_layer(layer, s_in, t_in, s_out, t_out, c_s, c_t)
            dtype = layer.weight.dtype
            if why := (_magnitude_problem(mags, dtype, f'the folded weights of `{name}`') or
                       _magnitude_problem(b.abs(), dtype, f'the folded bias of `{name}`', underflow=False)):
                own = all(bool(torch.isfinite(p).all()) for p in (layer.weight, layer.bias) if p is not None)
                bad = (name, why if own else f'`{name}` has non-finite weights'); break
            bias = new_parameter(b, layer.bias) if layer.bias is not None else new_parameter(b, layer.weight, shape=b.shape)
            updates[name] = {'weight': nn.Parameter(w, requires_grad=layer.weight.requires_grad), 'bias': bias}
        if bad is None or not cancel: break
        for d in decisions:
            if bad[0] in d.layers: d.reason, d.parts = Reason('numeric', bad[1]), []
    for d in decisions:   # a BatchNorm whose chain went no further takes the map of the BatchNorms merged into it
        if d.merged_into and not any(e.bn == d.merged_into and e.folded for e in decisions):
            rep = next(e for e in decisions if e.bn == d.merged_into)
            if rep.bn not in updates: updates[rep.bn] = _merged_affine(model.get_submodule(rep.bn), rep.affine)
    return updates

def _merged_affine(bn, affine) -> dict:
    "New weight and bias that make `bn` compute the composed map `affine` with its own statistics."
    s, t = affine
    mean, var = bn.running_mean.detach().double(), bn.running_var.detach().double()
    gamma, beta = s * torch.sqrt(var + bn.eps), t + mean * s
    like = bn.running_mean
    make = (lambda v, old: new_parameter(v, old) if isinstance(old, nn.Parameter) else cast_like(old, v)) 
    w_old, b_old = getattr(bn, 'weight', None), getattr(bn, 'bias', None)
    return {'weight': make(gamma, w_old) if w_old is not None else nn.Parameter(cast_like(like, gamma)),
            'bias': make(beta, b_old) if b_old is not None else nn.Parameter(cast_like(like, beta))}

# ---------------------------------------------------------------------------------------------------- applying them
@patch
def _apply(self: BN_Folder, model, decisions, updates):
    "Write the new tensors and replace folded BatchNorms, through each module's own `__setattr__`; undo everything if any step fails."
    journal = []   # (module, attribute, old value), to undo in reverse
    def put(module, attr, value):
        journal.append((module, attr, getattr(module, attr)))
        setattr(module, attr, value)
    try:
        for name, tensors in updates.items():
            m = model.get_submodule(name)
            for attr, v in tensors.items(): put(m, attr, v)
            if isinstance(m, _BatchNorm) and not m.affine: put(m, 'affine', True)   # it took a merged map: now it has weight and bias
        for d in decisions:
            if not d.folded: continue
            parent_name, _, attr = d.bn.rpartition('.')
            parent = model.get_submodule(parent_name)
            if is_batchnorm(bn := getattr(parent, attr)): put(parent, attr, bn_replacement(bn, d.direction))   # (a copy may hold it already)
    except BaseException:
        _undo(journal)
        raise
    return journal

def _undo(journal: list):
    "Put back, in reverse order, every value an `_apply` wrote."
    for module, attr, old in reversed(journal): setattr(module, attr, old)

@patch
def _report(self: BN_Folder, model, decisions, untraceable, notes):
    "One row per BatchNorm of the original model, in model order."
    by_bn = {d.bn: d for d in decisions}
    def into(d):
        if d.merged_into:
            rep = by_bn[d.merged_into]
            return ', '.join(rep.layers) if rep.folded else d.merged_into
        return ', '.join(d.layers)
    rows = []
    for name, m in model.named_modules():
        if not (name in by_bn or is_batchnorm(m) or _scripted_bn(m)): continue
        d = by_bn.get(name)
        if d is None:
            scripted = _scripted_bn(m) or any(name.startswith(u + '.') and 'scripted' in v for u, v in untraceable.items()) or ('' in untraceable and 'scripted' in untraceable[''])
            parent = max((u for u in untraceable if not u or name.startswith(u + '.')), key=len, default=None)
            if scripted: rows.append(FoldRow(name, False, reason='it is inside a scripted module (torch.jit.script), whose graph fasterbn cannot edit', kind='scripted'))
            elif parent is not None:
                rows.append(FoldRow(name, False, reason=f'its neighbours are in `{parent or "<model>"}`, which torch.fx could not trace', kind='untraceable'))
            else: rows.append(FoldRow(name, False, reason='never called in the traced forward', kind='unused'))
        elif d.folded: rows.append(FoldRow(name, True, into(d), d.direction, d.via))
        else: rows.append(FoldRow(name, False, reason=d.reason.text, kind=d.reason.kind))
    return FoldReport(rows, untraceable, notes)

# ---------------------------------------------------------------------------------------------------- checking it on example_inputs
def _outputs64(root: nn.Module, inputs: tuple) -> list:
    "The float tensors `root` returns on `inputs`, as float64, leaving no trace on `root`."
    with torch.no_grad(), preserved(root):
        dtype = next((t.dtype for t in [*root.parameters(), *root.buffers()] if t.is_floating_point()), torch.float32)
        out = root(*[x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in inputs])
    return [o.double() for o in _flat_outputs(out) if o.is_floating_point()]

def _max_diff(a: list, b: list) -> float: return max((float((x - y).abs().max()) for x, y in zip(a, b) if x.numel()), default=0.)

@patch
def _references(self: BN_Folder, model, decisions, roots, notes) -> dict:
    "For each checkable root with folds: its float64 outputs (from a float64 copy), and the unfolded model's own float32 error."
    refs = {}
    for name, inputs in roots:
        if not any(d.folded and _under(d.bn, name) for d in decisions): continue
        root = model.get_submodule(name)
        try:
            ref = _outputs64(copy.deepcopy(root).double(), tuple(_to_double(x) for x in inputs))
            base = _outputs64(root, inputs)
        except Exception as e:
            notes.append(f'folds in `{name or "<model>"}` were not checked: no float64 copy of it runs ({_first_line(e)})'); continue
        refs[name] = (inputs, ref, _max_diff(base, ref), max((float(r.abs().max()) for r in ref if r.numel()), default=0.))
    return refs

def _under(bn: str, root: str) -> bool: return not root or bn.startswith(root + '.')

def _units(decisions) -> list[list]:
    "Folded decisions grouped so that each group can be applied alone: those that touch a common layer, or merge into one BatchNorm."
    groups, where = [], {}
    for d in decisions:
        if not d.folded: continue
        keys = set(d.layers) | {d.merged_into or d.bn}
        hit = {id(g): g for k in keys if (g := where.get(k)) is not None}
        g = [d]
        for other in hit.values(): g += other; groups.remove(other)
        groups.append(g)
        for x in g:
            for k in set(x.layers) | {x.merged_into or x.bn}: where[k] = g
    return groups

@patch
def _verify(self: BN_Folder, model, work, decisions, updates, refs, journal):
    "Cancel the folds that change a checked root's output on example_inputs by more than float32 rounding (bisecting to find them)."
    def error(name):
        inputs, ref, base, scale = refs[name]
        err = _max_diff(_outputs64(work.get_submodule(name), inputs), ref)
        return err, err <= 10 * base + 1e-6 * max(1., scale)
    bad = {}
    for name in refs:
        err, ok = error(name)
        if not ok: bad[name] = err
    if not bad: return
    _undo(journal); journal.clear()
    culprits = []
    def search(units, name):   # `units` fail together: find the smallest failing groups
        if len(units) == 1: culprits.extend(units[0]); return
        half = len(units) // 2
        failed = False
        for part in (units[:half], units[half:]):
            part_decisions = [d for u in part for d in u]
            j = self._apply(work, part_decisions, self._compute(model, part_decisions, cancel=False))
            ok = error(name)[1]; _undo(j)
            if not ok: failed = True; search(part, name)
        if not failed: culprits.extend(d for u in units for d in u)   # only together: cancel them all
    for name, err in bad.items():
        search([u for u in _units(decisions) if _under(u[0].bn, name)], name)
        base = refs[name][2]
        for d in culprits:
            if d.folded:
                d.parts, d.merged_into = [], ''
                d.reason = Reason('check', f'folding it changed the output of `{name or "<model>"}` on example_inputs by {err:.3g}, where float32 '
                                           f'rounding explains {base:.3g}: forward uses the modules in a way the graph does not show')
    journal.extend(self._apply(work, decisions, self._compute(model, decisions)))

# ---------------------------------------------------------------------------------------------------- checking a fold
@torch.no_grad()
def randomize_bn(model: nn.Module, # every BatchNorm in it gets new statistics and affine parameters, in place
                 seed: int=0, # for reproducibility
                ) -> nn.Module: # the same model
    "Give every BatchNorm with running statistics a trained-looking state: random scale (a few negative and zero), shift, mean, variance."
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if not is_batchnorm(m) or getattr(m, 'running_mean', None) is None: continue
        c, like = m.running_mean.numel(), m.running_mean
        m.running_mean.copy_(torch.randn(c, generator=g).to(like) * .5)
        m.running_var.copy_((torch.rand(c, generator=g) * 1.5 + .25).to(like))
        if getattr(m, 'weight', None) is not None:
            m.weight.copy_((torch.randn(c, generator=g) * .5 + 1).to(like) * torch.where(torch.rand(c, generator=g) < .1, -1, 1).to(like))
            m.weight[::11] = 0
        if getattr(m, 'bias', None) is not None: m.bias.copy_((torch.randn(c, generator=g) * .5).to(like))
    return model

def _to_double(x): return x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x

def _flat_outputs(out) -> list:
    "Tensors of a model output (tensor, tuple/list, dict, or an object with tensor attributes such as torchvision's InceptionOutputs)."
    if isinstance(out, torch.Tensor): return [out]
    if isinstance(out, dict): return [t for v in out.values() for t in _flat_outputs(v)]
    if isinstance(out, (tuple, list)): return [t for v in out for t in _flat_outputs(v)]
    return []

@torch.no_grad()
def fold_error(original: nn.Module, # the unfolded model
               folded: nn.Module, # the folded model
               *inputs, # inputs for both
              ) -> tuple[float, float]: # (folded error, unfolded error), each the max abs difference to float64
    "Max abs error of the folded model and of the unfolded one, both against a float64 copy of the original, all in eval mode (modes are restored)."
    ref_model = copy.deepcopy(original).double().eval()
    ref = _flat_outputs(ref_model(*map(_to_double, inputs)))
    def err(m):
        modes = {x: x.training for x in m.modules()}
        dtype = next((t.dtype for t in [*m.parameters(), *m.buffers()] if t.is_floating_point()), torch.float32)
        try: outs = _flat_outputs(m.eval()(*[x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in inputs]))
        finally:
            for x, mode in modes.items(): x.train(mode)
        return max(float((o.double() - r).abs().max()) for o, r in zip(outs, ref))
    return err(folded), err(original)

# ---------------------------------------------------------------------------------------------------- timing a fold
@torch.inference_mode()
def interleaved_times(models: dict, # name -> model, all taking `inputs`
                      inputs: tuple, # the inputs of one forward call
                      repeats: int=7, # timings per model
                      warmup: int=2, # untimed calls per model first
                      min_time: float=0.05, # seconds one timing should last at least (several calls when a call is fast)
                     ) -> dict: # name -> list of seconds per call, one per repeat
    "Forward times of each model, timed in a rotating interleaved order."
    names, slowest = list(models), 0.
    for n in names:
        for _ in range(warmup): models[n](*inputs)
        t0 = time.perf_counter(); models[n](*inputs); slowest = max(slowest, time.perf_counter() - t0)   # a warm call, to size the timings
    calls = max(1, math.ceil(min_time / max(slowest, 1e-6)))
    times = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            for _ in range(calls): models[n](*inputs)
            times[n].append((time.perf_counter() - t0) / calls)
    return times

def latency_ratio(times: list, # seconds per repeat of the folded model (from `interleaved_times`)
                  base: list, # seconds per repeat of the unfolded model, same repeats
                 ) -> float: # median over repeats of times / base
    "Median of the per-repeat ratios of two interleaved timing series."
    return statistics.median(t / b for t, b in zip(times, base))
