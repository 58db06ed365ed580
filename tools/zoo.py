#!/usr/bin/env python
"""The zoo sweep (`make zoo`): fold the BatchNorms of every timm family and every torchvision model that has one.

    python tools/zoo.py [--quick] [--models PATTERN ...] [--limit N] [--jobs 2] [--timeout 600] [--memory 12] [--out bench/] [--relist]
    python tools/zoo.py --render        # rewrite DIR/zoo.md from DIR/zoo.jsonl, without running anything

What runs
- timm: one model per family, where a family is the model's entrypoint module plus the first word of its name with
  the size suffix cut off (`resnet.py` + `resnet50d` -> `resnet:resnet`, `efficientnet.py` + `tf_efficientnet_b0` ->
  `efficientnet:tf`, `mobilenetv3_large_100` -> `mobilenetv3`). The module says which code builds the model, the word
  separates architectures that share a module (byobnet.py holds RepVGG, MobileOne, GerNet...). The representative is the
  smallest member with a BatchNorm and at most 60 M parameters; parameters and BatchNorms are counted on the meta device.
- torchvision: every model of `torchvision.models.list_models()` that has a BatchNorm: classification, detection (built
  with `weights_backbone=None`, plus a `+frozen` variant whose backbone BatchNorms are swapped for `FrozenBatchNorm2d`
  as with pretrained backbones), segmentation, video, optical flow, and quantization (float models, `quantize=False`).
- Nothing is downloaded: `weights=None` / `pretrained=False` everywhere; weights are random, BatchNorm statistics come
  from `randomize_bn(model, 0)` so that folding is not a no-op.

Input size: the smallest square size in 64, 96, 128, 160, 192, 224 (up to timm's `pretrained_cfg['input_size']`, or
exactly that when the cfg says `fixed_input_size`) at which one float32 forward runs; batch 2. Detection models get one
128 px image and are built with `min_size=max_size=128` (their transform would resize to 800 px otherwise; SSD keeps its
fixed 300/320). Video models try (T, H) = (4, 32), (8, 64), (16, 112), (16, 224) with batch 1; RAFT two 1-image frames.
A model whose forward cannot run in float64 (RAFT casts its coordinate grid with `.float()`) is checked in float32 and
gets no exactness verdict.

Per model, in its own forked process (time limit `--timeout`, address-space limit `--memory`, raised for a model whose float64
pass needs three float64 copies of its weights beyond it, one torch thread):
1. float32: `BN_Folder().fold(model, example_inputs=x)` -> BatchNorms folded / total, fold time, why the others were not.
2. float32: `torch.fx.experimental.optimization.fuse` -> BatchNorms that fx's graph still references after fusing
   (`call_module` of a BatchNorm, or reads of its tensors, which is how timm's `BatchNormAct2d` and torchvision's
   `FrozenBatchNorm2d` appear once fx inlines them), subtracted from those referenced before fusing; untraceable -> 0.
3. float64: the model is rebuilt with the same seeds, `.double()`, run once for the reference, folded in place (one float64
   copy instead of two: memory), run again. Error = max over output tensors of max|folded - ref| / max|ref|, must be
   <= 1e-9. Where fx `fuse` folded more BatchNorms than fasterbn, its float64 error is measured the same way.
Detectors are compared on their dense stages (backbone, heads) instead of their final boxes: see `PROBES`.
Status: ok, crash (fasterbn raised: stage + exception), error (the unfolded model could not be built or run here),
oom (over `--memory`), timeout, died (the worker process ended without a result), no-bn (skipped).

Where the fold is inexact (over 1e-9), the float64 noise floor is measured too: how far the unfolded model's output
moves when every weight is changed by about one rounding error, and when only the order of its sums changes (the same
model in channels_last memory format): an ill-conditioned model amplifies rounding.

Outputs: DIR/zoo.jsonl (a `run` line, then one line per model) and DIR/zoo.md. Partial runs (--quick, --models,
--limit) write DIR/zoo-partial.* instead, so trying the tool never overwrites the committed full sweep. Listing the
timm families builds all ~1400 timm models on the meta device (about 15 min on two busy cores), so a full sweep reuses
the model list stored in DIR/zoo.jsonl when it was made with the same timm and torchvision versions (--relist: list again).
"""
import argparse, datetime, fnmatch, json, os, platform, re, sys, time, warnings
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import torch, torch.nn as nn
torch.set_num_threads(1)   # before any work: every forked worker inherits one intra-op thread
import timm, torchvision, torchvision.models as tvm
from torchvision.ops.misc import FrozenBatchNorm2d
from fasterbn.folder import BN_Folder, randomize_bn
from fasterbn.ops import is_batchnorm
from zoo_lib import (TOL, SEED, shape_of, rel_error, outputs, compare, first_line, fx_fuse, perturbed, is_oom,
                     row_kind, pattern, room_for, run_pool, pct, clip, fmt_err, md)

MAX_PARAMS = 60e6
SIZES = (64, 96, 128, 160, 192, 224)
DET_SIZE = 128
VIDEO = ((4, 32), (8, 64), (16, 112), (16, 224))
QUICK = ['tv/resnet18', 'tv/densenet121', 'tv/mobilenet_v3_small', 'tv/r3d_18', 'tv/lraspp_mobilenet_v3_large',
         'tv/fasterrcnn_mobilenet_v3_large_320_fpn+frozen', 'timm/resnet10t', 'timm/tf_efficientnet_lite0',
         'timm/repvgg_a0', 'timm/levit_128s', 'timm/mobilenetv3_small_050', 'timm/efficientvit_m0']
warnings.filterwarnings('ignore')

# ---------------------------------------------------------------- which models

def family(name: str) -> str:
    "`module:word`: the timm entrypoint module, and the name's first word without its size suffix (a `v2` is kept)."
    word = re.match(r'[a-z]+?(?:v\d+)?(?=[\d_]|$)', name.split('_')[0] + '_')
    return f"{timm.models.model_entrypoint(name).__module__.rpartition('.')[2]}:{word.group(0) if word else name}"

def tv_task(name: str) -> str:
    for task in ('detection', 'segmentation', 'video', 'optical_flow', 'quantization'):
        if name in tvm.list_models(module=getattr(tvm, task)): return task
    return 'classification'

@contextmanager
def _meta_params():
    "Parameters go to the meta device as they are registered: for builders that compute with tensors, which `torch.device('meta')` breaks."
    orig = nn.Module.register_parameter
    def register(self, name, p):
        orig(self, name, p)
        if p is not None: self._parameters[name] = nn.Parameter(p.to('meta'), requires_grad=p.requires_grad)
    nn.Module.register_parameter = register
    try: yield
    finally: nn.Module.register_parameter = orig

def count(spec) -> tuple[int, int]:
    "(parameters, BatchNorms) of a model, built without allocating its weights."
    for ctx in (lambda: torch.device('meta'), _meta_params):
        try:
            with ctx(): m = build(spec)
            return sum(p.numel() for p in m.parameters()), sum(is_batchnorm(x) for x in m.modules())
        except Exception: continue
    return -1, -1

def probe_family(task):
    "The representative of one timm family: its smallest member with a BatchNorm and <= 60 M parameters."
    fam, names = task
    sized = [(*count({'source': 'timm', 'name': n}), n) for n in names]
    ok = sorted((p, n) for p, b, n in sized if b > 0 and 0 <= p <= MAX_PARAMS)
    return [{'id': f'timm/{ok[0][1]}', 'source': 'timm', 'name': ok[0][1], 'family': fam, 'family_size': len(names)}] if ok else []

def probe_torchvision(names):
    "Every torchvision model with a BatchNorm, and for detection models also the FrozenBatchNorm2d variant."
    specs = []
    for name in names:
        task = tv_task(name)
        spec = {'id': f'tv/{name}', 'source': 'torchvision', 'name': name, 'family': f'torchvision:{task}'}
        if count(spec)[1] <= 0: continue
        specs.append(spec)
        if task == 'detection': specs.append({**spec, 'id': f'tv/{name}+frozen', 'frozen': True})
    return specs

def all_specs(jobs: int) -> list[dict]:
    "Representatives of the timm families and the torchvision models, probed in parallel workers."
    fams = defaultdict(list)
    for n in timm.list_models(): fams[family(n)].append(n)
    tasks = [(probe_torchvision, tvm.list_models())] + [(probe_family, kv) for kv in sorted(fams.items())]
    specs = []
    for (_, arg), res in run_pool(tasks, jobs, timeout=1800, memory_gb=0):
        if 'value' in res: specs += res['value']
        else: print(f"listing {arg[0] if isinstance(arg, tuple) else 'torchvision'} failed: {res}", flush=True)   # say so, never drop silently
    return sorted(specs, key=lambda s: (s['source'] != 'torchvision', s['name']))

def named_specs(patterns: list[str]) -> list[dict]:
    "Models matching `timm/NAME` or `tv/NAME` patterns (a bare pattern matches names in both), without family selection."
    ids = [f'tv/{n}' for n in tvm.list_models()] + [f'tv/{n}+frozen' for n in tvm.list_models(module=tvm.detection)]
    ids += [f'timm/{n}' for n in timm.list_models()]
    out = []
    for i in ids:
        if any(fnmatch.fnmatchcase(i, p) or '/' not in p and fnmatch.fnmatchcase(i.split('/', 1)[1], p) for p in patterns):
            src, name = i.split('/', 1)
            name, frozen = name.removesuffix('+frozen'), name.endswith('+frozen')
            out.append({'id': i, 'source': 'timm' if src == 'timm' else 'torchvision', 'name': name, 'frozen': frozen,
                        'family': family(name) if src == 'timm' else f'torchvision:{tv_task(name)}'})
    return out

# ---------------------------------------------------------------- one model

def build(spec) -> nn.Module:
    "The model with random weights (seeded), nothing downloaded."
    torch.manual_seed(SEED)
    name = spec['name']
    if spec['source'] == 'timm': return timm.create_model(name, pretrained=False)
    task, kw = tv_task(name), {'weights': None}
    if task in ('detection', 'segmentation'): kw['weights_backbone'] = None   # the default would download ImageNet weights
    if task == 'detection' and not name.startswith('ssd'): kw.update(min_size=DET_SIZE, max_size=DET_SIZE)
    if task == 'quantization': kw['quantize'] = False
    return tvm.get_model(name, **kw)

def freeze_bns(module: nn.Module):
    "Swap every BatchNorm2d below `module` for a FrozenBatchNorm2d with the same state (as torchvision does for pretrained backbones)."
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for k in ('weight', 'bias', 'running_mean', 'running_var'): getattr(frozen, k).copy_(getattr(child, k).detach())
            setattr(module, name, frozen)
        else: freeze_bns(child)

def prepared(spec, dtype=torch.float32) -> nn.Module:
    model = randomize_bn(build(spec), SEED)
    if spec.get('frozen'): freeze_bns(model.backbone)
    return model.eval().to(dtype)

def candidate_inputs(spec, model):
    "Inputs to try, smallest first."
    g = torch.Generator().manual_seed(SEED)
    rand = lambda *s: torch.randn(*s, generator=g)
    if spec['source'] == 'timm':
        cfg = getattr(model, 'pretrained_cfg', None) or {}
        c, h, w = cfg.get('input_size', (3, 224, 224))
        sizes = [] if cfg.get('fixed_input_size') else [(s, s) for s in SIZES if s < min(h, w)]
        return [(rand(2, c, *s),) for s in sizes + [(h, w)]]
    task = tv_task(spec['name'])
    if task == 'detection': return [([rand(3, DET_SIZE, DET_SIZE)],)]
    if task == 'video': return [(rand(1, 3, t, s, s),) for t, s in VIDEO]
    if task == 'optical_flow': return [(rand(1, 3, s, s), rand(1, 3, s, s)) for s in SIZES]
    return [(rand(2, 3, s, s),) for s in SIZES]

# A detector's final boxes are thresholded, sorted and NMS-ed: with random weights often none are left, and near-tied scores
# (1e-16 apart) swap places, so its exactness is measured on its dense stages instead; the final output's error is kept as information.
PROBES = ('backbone', 'rpn.head', 'roi_heads.box_head', 'roi_heads.box_predictor', 'roi_heads.mask_head',
          'roi_heads.mask_predictor', 'roi_heads.keypoint_head', 'roi_heads.keypoint_predictor', 'head')

def measure(spec) -> dict:
    "Everything the sweep records about one model."
    rec, stage, t_start = {k: spec[k] for k in ('id', 'source', 'name', 'family') if k in spec}, 'build', time.perf_counter()
    try:
        model = prepared(spec)
        rec['params'] = sum(p.numel() for p in model.parameters())
        room_for(rec['params'])
        bn_names = {n for n, m in model.named_modules() if is_batchnorm(m)}
        rec['bn'] = len(bn_names)
        if not bn_names: return {**rec, 'status': 'no-bn'}
        stage, last = 'input', None
        for x in candidate_inputs(spec, model):
            try:
                with torch.no_grad(): model(*x)
                break
            except Exception as e: last = e
        else: raise last
        rec['input'] = ', '.join(map(shape_of, x))

        stage = 'fold'   # 1. fasterbn, float32
        folder = BN_Folder()
        t0 = time.perf_counter(); folded = folder.fold(model, example_inputs=x); rec['fold_s'] = round(time.perf_counter() - t0, 3)
        rep = folder.report
        rec.update(folded=rep.n_folded, total=len(rep), untraceable=len(rep.untraceable), notes=rep.notes,
                   backward=sum(r.direction == 'backward' for r in rep.folded),
                   not_folded=[{'bn': r.bn, 'kind': row_kind(r), 'pattern': pattern(r.reason), 'reason': r.reason} for r in rep.not_folded])
        del folded

        stage = 'fuse'   # 2. fx fuse, float32
        rec['fuse_folded'], fused, rec['fuse_error'] = fx_fuse(model, bn_names)
        del model, fused

        stage = 'reference'   # 3. float64: the folded model against the unfolded one
        probes = PROBES if spec['source'] == 'torchvision' and tv_task(spec['name']) == 'detection' else ()
        for dtype in (torch.float64, torch.float32):   # float32 only for models that cannot run in float64
            torch.set_default_dtype(dtype)   # for tensors a forward creates itself
            model = prepared(spec, dtype)
            xd = tuple(t.to(dtype) if isinstance(t, torch.Tensor) else [u.to(dtype) for u in t] for t in x)
            try: ref = outputs(model, xd, probes); break
            except Exception as e:
                if dtype == torch.float32 or is_oom(e): raise
                rec['check_dtype'], rec['float64_error'] = 'float32', first_line(e)   # RAFT: `coords_grid` calls .float()
            del model
        if rec['fuse_folded'] > rec['folded']:
            _, fused, err = fx_fuse(model, bn_names)
            rec['fuse_rel_err'] = compare(outputs(fused, xd, probes), ref) if fused is not None else err
            del fused
        stage = 'fold64'
        folder64 = BN_Folder(check=False)   # this pass measures exactness itself (fasterbn's own check would hold two more float64 copies)
        folder64.fold(model, inplace=True, example_inputs=xd)   # in place: the reference output is already computed
        stage = 'check'
        out = outputs(model, xd, probes)
        rec['rel_err'] = compare(out, ref)
        if probes: rec['output_rel_err'] = rel_error(out['output'], ref['output'])
        rec['exact'] = rec['rel_err'] <= TOL if dtype == torch.float64 else None   # no float32 verdict: its rounding is ~1e-7
        if rec['exact'] is False:   # how far one rounding of every weight moves this model's output: the float64 noise floor
            del model
            rec['noise'] = compare(outputs(perturbed(prepared(spec, dtype)), xd, probes), ref)
            # and how far it moves when only the order of the sums changes: the unfolded model in channels_last memory format
            last = lambda t: t.contiguous(memory_format=torch.channels_last) if isinstance(t, torch.Tensor) and t.dim() == 4 else t
            try: rec['order_noise'] = compare(outputs(prepared(spec, dtype).to(memory_format=torch.channels_last), tuple(map(last, xd)), probes), ref)
            except Exception: pass
        if folder64.report.n_folded != rec['folded']: rec['notes'] = rec['notes'] + [f'the {dtype} fold folded {folder64.report.n_folded}']
        rec['status'] = 'ok'
    except Exception as e:
        status = 'oom' if is_oom(e) else 'crash' if stage in ('fold', 'fold64', 'check') else 'error'
        rec.update(status=status, stage=stage, error=first_line(e))
    rec['wall_s'] = round(time.perf_counter() - t_start, 1)
    return rec

def last_specs(jsonl: Path) -> list[dict]|None:
    "The models of the last full sweep, if it ran with these timm and torchvision versions: listing the families takes minutes."
    try: run = json.loads(jsonl.read_text().splitlines()[0])['run']
    except Exception: return None
    if run.get('listed_with') != _versions() or not run.get('specs'): return None
    print(f'the models of {jsonl} (--relist to list the timm families again)')
    return [{**s, 'reused_list': run.get('date')} for s in run['specs']]

def _versions() -> str: return f'timm {timm.__version__}, torchvision {torchvision.__version__}'

def run_models(specs, args, jsonl: Path) -> list[dict]:
    recs, t0 = [], time.monotonic()
    with jsonl.open('w') as f:
        f.write(json.dumps({'run': {**run_info(args), 'listed_with': _versions(), 'specs': [_spec(s) for s in specs]}}) + '\n')
        for i, ((_, spec), res) in enumerate(run_pool([(measure, s) for s in specs], args.jobs, args.timeout, args.memory), 1):
            rec = res.get('value') or {**{k: spec[k] for k in ('id', 'source', 'name', 'family')},
                                       'status': next(k for k in ('timeout', 'died', 'error') if k in res), 'error': next(iter(res.values()))}
            if rec['status'] == 'error' and 'stage' not in rec: rec['status'] = 'died'   # the worker itself failed
            recs.append(rec); f.write(json.dumps(rec) + '\n'); f.flush()
            print(f'[{i}/{len(specs)} {time.monotonic() - t0:5.0f}s] {line(rec)}', flush=True)
    return recs

def line(r) -> str:
    if r['status'] != 'ok': return f"{r['id']}: {r['status']} {r.get('stage', '')} {r.get('error', '')}"
    bad = {True: '', False: '  INEXACT', None: '  (float32 check)'}[r['exact']]
    return f"{r['id']}: {r['folded']}/{r['total']} (fuse {r['fuse_folded']}), err {r['rel_err']:.1e}, fold {r['fold_s']:.1f}s{bad}"

def run_info(args) -> dict:
    return {'command': 'python tools/zoo.py ' + ' '.join(sys.argv[1:]), 'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
            'machine': f'{platform.processor() or platform.machine()}, nproc = {os.cpu_count()}, 1 torch thread per worker, {args.jobs} workers',
            'versions': f'torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, Python {platform.python_version()}',
            'timeout_s': args.timeout, 'list_s': getattr(args, 'list_s', None),
            'list_from': getattr(args, 'list_from', None), 'load_start': os.getloadavg()[0]}

def _spec(s: dict) -> dict: return {k: v for k, v in s.items() if k != 'reused_list'}

# ---------------------------------------------------------------- report

def render(jsonl: Path) -> str:
    lines = [json.loads(l) for l in jsonl.read_text().splitlines() if l.strip()]
    run = next((l['run'] for l in lines if 'run' in l), {})
    recs = [l for l in lines if 'id' in l]
    ok = [r for r in recs if r['status'] == 'ok']
    bad = [r for r in recs if r['status'] not in ('ok', 'no-bn')]
    bns, fb, fu = sum(r['total'] for r in ok), sum(r['folded'] for r in ok), sum(r['fuse_folded'] for r in ok)
    inexact = [r for r in ok if r['exact'] is False]
    f32 = [r for r in ok if r['exact'] is None]
    more = [r for r in ok if r['fuse_folded'] > r['folded']]
    out = ['# BatchNorm folding across the model zoo', '']
    out += [f'- {k}: ' + (f'`{run[k]}`' if k == 'command' else run[k]) for k in ('command', 'date', 'machine', 'versions') if k in run]
    if 'wall_s' in run:
        listing = f"the model list of the sweep of {run['list_from']}" if run.get('list_from') else f"{run.get('list_s')} s of it listing the models"
        out.append(f"- run time {run['wall_s'] / 60:.0f} min ({listing}); 1-minute load average "
                   f"{run['load_start']:.1f} at the start, {run['load_end']:.1f} at the end (2 = both cores busy)")
    out += ['', '## Summary', '', '| models | BatchNorms | fasterbn folded | fx `fuse` folded | inexact folds (> 1e-9) | fuse folds more | crashes | time-outs | other failures |',
            '|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
            f"| {len(ok)} | {bns} | {fb} ({pct(fb, bns)}) | {fu} ({pct(fu, bns)}) | {len(inexact)} | {len(more)} | "
            f"{sum(r['status'] == 'crash' for r in recs)} | {sum(r['status'] == 'timeout' for r in recs)} | {sum(r['status'] in ('error', 'died', 'oom') for r in recs)} |", '']
    out.append(f"Totals count the {len(ok)} models that ran to the end; {len(bad)} did not (listed below)"
               + (f", {sum(r['status'] == 'no-bn' for r in recs)} had no BatchNorm" if any(r['status'] == 'no-bn' for r in recs) else '') + '.')
    by_src = defaultdict(list)
    for r in ok: by_src[r['source']].append(r)
    out += ['', '| source | models | BatchNorms | fasterbn | fx `fuse` |', '|---|---:|---:|---:|---:|']
    for s, rs in sorted(by_src.items()):
        n = sum(r['total'] for r in rs)
        out.append(f"| {s} | {len(rs)} | {n} | {pct(sum(r['folded'] for r in rs), n)} | {pct(sum(r['fuse_folded'] for r in rs), n)} |")
    if inexact or more or bad or f32:
        out += ['', '## Findings', '']
        out += [f"- **inexact**: `{r['id']}` relative error {r['rel_err']:.3g}" + (f"; one rounding of every weight of the unfolded model moves its "
                f"output by {r['noise']:.3g}" if isinstance(r.get('noise'), float) else '')
                + (f", and running it in channels_last memory format (the same weights, its sums in another order) by {r['order_noise']:.3g}"
                   if isinstance(r.get('order_noise'), float) else '') + ': its float64 noise floor' for r in inexact]
        out += [f"- checked in float32 only (its float64 forward fails: {r['float64_error']}): `{r['id']}` relative error {r['rel_err']:.3g}" for r in f32]
        out += [f"- fx `fuse` folds more: `{r['id']}` {r['fuse_folded']} vs {r['folded']} (fuse's float64 error {fmt_err(r.get('fuse_rel_err'))})" for r in more]
        out += [f"- {r['status']}: `{r['id']}`{' at ' + r['stage'] if r.get('stage') else ''}: {r.get('error', '')}" for r in bad]
    kinds, models, example = Counter(), defaultdict(set), {}
    pats = defaultdict(Counter)
    for r in ok:
        for nf in r['not_folded']:
            kinds[nf['kind']] += 1; models[nf['kind']].add(r['id']); example.setdefault(nf['kind'], (r['id'], nf))
            pats[nf['kind']][nf.get('pattern', '')] += 1
    out += ['', '## Not folded, by kind', '', f'{bns - fb} BatchNorms were not folded.', '',
            '| kind | BatchNorms | models | commonest surroundings | example |', '|---|---:|---:|---|---|']
    for k, n in kinds.most_common():
        m, nf = example[k]
        common = '; '.join(f'`{p}` {c}' for p, c in pats[k].most_common(3))
        out.append(f"| {k} | {n} | {len(models[k])} | {common} | `{m}` `{nf['bn']}`: {md(clip(nf['reason'], 220))} |")
    out += ['', '## Per model', '', '| model | params | BN | fasterbn | fx `fuse` | error | fold s |', '|---|---:|---:|---:|---:|---:|---:|']
    for r in recs:   # family, input size, backward folds and the reasons are in the .jsonl
        if r['status'] == 'no-bn': continue
        p = f"{r['params'] / 1e6:.1f} M" if r.get('params') else ''
        if r['status'] == 'ok':
            flag = ' **inexact**' if r['exact'] is False else ' (float32)' if r['exact'] is None else ''
            out.append(f"| {r['id']} | {p} | {r['total']} | {r['folded']} | {r['fuse_folded']}{' ✗' if r['fuse_error'] else ''} | "
                       f"{fmt_err(r['rel_err'])}{flag} | {r['fold_s']:.2f} |")
        else:
            out.append(f"| {r['id']} | {p} | {r.get('bn', '')} | | | {r['status']}: {md(r.get('error', ''))[:120]} | |")
    out += ['', 'BN: BatchNorms in the model; fasterbn, fx `fuse`: how many each folded (✗: fx could not trace the model, so `fuse` folds none). '
            'Error: max over output tensors of max|folded − unfolded| / max|unfolded|, both in float64; a failed model shows its status there.']
    return '\n'.join(out) + '\n'

# ---------------------------------------------------------------- main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--models', nargs='+', metavar='PATTERN', help='run these models (`timm/NAME`, `tv/NAME`, fnmatch patterns) instead of the family representatives')
    ap.add_argument('--quick', action='store_true', help=f'a dozen representative models: {", ".join(QUICK)}')
    ap.add_argument('--limit', type=int, help='only the first N models')
    ap.add_argument('--jobs', type=int, default=2, help='models run at once, one process each (default 2)')
    ap.add_argument('--timeout', type=float, default=600, help='seconds per model (default 600)')
    ap.add_argument('--memory', type=float, default=12, help='GiB of address space per worker beyond its imports (default 12; 0: no limit)')
    ap.add_argument('--out', type=Path, default=ROOT / 'bench', help='output folder (default bench/)')
    ap.add_argument('--render', action='store_true', help='only rewrite zoo.md from zoo.jsonl')
    ap.add_argument('--relist', action='store_true', help="list the timm families again instead of reusing the last sweep's models")
    args = ap.parse_args(argv)
    partial = bool(args.quick or args.models or args.limit)
    stem = args.out / ('zoo-partial' if partial else 'zoo')
    if args.render:
        if not stem.with_suffix('.jsonl').exists(): sys.exit(f'no {stem.with_suffix(".jsonl")}: run the sweep first')
        stem.with_suffix('.md').write_text(render(stem.with_suffix('.jsonl'))); return 0
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    specs = named_specs(args.models or QUICK) if args.models or args.quick else None if args.relist else last_specs(args.out / 'zoo.jsonl')
    specs = specs if specs is not None else all_specs(args.jobs)
    specs = specs[:args.limit] if args.limit else specs
    args.list_s = round(time.monotonic() - t0)
    args.list_from = specs[0].get('reused_list') if specs else None
    print(f'{len(specs)} models ({args.list_s} s to list them)', flush=True)
    jsonl = stem.with_suffix('.jsonl')
    run_models(specs, args, jsonl)
    lines = jsonl.read_text().splitlines()   # the run's wall time and end load go into its first line
    info = json.loads(lines[0]); info['run'].update(wall_s=round(time.monotonic() - t0), load_end=os.getloadavg()[0])
    jsonl.write_text('\n'.join([json.dumps(info)] + lines[1:]) + '\n')
    stem.with_suffix('.md').write_text(render(jsonl))
    print(f'wrote {jsonl} and {stem.with_suffix(".md")}')
    return 0

if __name__ == '__main__': sys.exit(main())
