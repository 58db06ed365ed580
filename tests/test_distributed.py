"Two CPU processes train a BatchNorm CNN under `DistributedDataParallel` (gloo, loopback only), fold with `BNFoldCallback`, and must agree exactly."
import os, socket, copy, pytest
import torch, torch.nn as nn, torch.distributed as dist, torch.multiprocessing as mp

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason='torch.distributed with gloo is not available')

WORLD = 2

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(8), nn.Dropout(.1), nn.Linear(8, 2))

def _flat(m: nn.Module) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in m.state_dict().values() if t.is_floating_point()])

def _gather(t: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.empty_like(t) for _ in range(WORLD)]
    dist.all_gather(out, t)
    return out

def _scenario(rank, dls, validate: bool, sync):
    "Train under DDP, fold on every rank (callback when `sync` is None, else `fold_bn(sync=sync)`); what the parent checks."
    from fastai.learner import Learner
    from fastai.callback.core import Callback, CancelValidException
    import fastai.callback.progress
    from fasterbn.callback import BNFoldCallback
    from fasterbn.folder import fold_error, unwrap as _unwrap

    class Probe(Callback):
        "Keeps a copy of the unfolded model, right before the fold."
        order = BNFoldCallback.order - 1
        def after_fit(self): self.unfolded = copy.deepcopy(_unwrap(self.learn.model))
    class NoValid(Callback):
        def before_validate(self): raise CancelValidException()

    probe = Probe()
    cbs = [probe] + ([] if validate else [NoValid()]) + ([BNFoldCallback()] if sync is None else [])
    learn = Learner(dls, nn.parallel.DistributedDataParallel(_model()), loss_func=nn.CrossEntropyLoss(), cbs=cbs)
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-2)
    if sync is not None: learn.fold_bn(sync=sync)   # on demand, on every rank

    unfolded, folded = probe.unfolded, _unwrap(learn.model)
    stats = torch.cat([b.reshape(-1).double() for n, b in unfolded.named_buffers() if 'running' in n])
    stats_spread = float(max((s - stats).abs().max() for s in _gather(stats)))   # did the ranks' statistics differ?
    flat = _flat(folded)
    same = all(torch.equal(f, flat) for f in _gather(flat))
    if sync is not False:   # the fold used rank 0's statistics: compare against the unfolded model with those
        for n, b in unfolded.named_buffers():
            if 'running' in n: dist.broadcast(b, src=0)
    xb = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    err, base = fold_error(unfolded, folded, xb)
    return dict(same=same, err=err, base=base, n_folded=learn.fold_report.n_folded, stats_spread=stats_spread, opt=learn.opt,
                is_ddp=isinstance(learn.model, nn.parallel.DistributedDataParallel), identity=type(folded[1]).__name__)

def _worker(rank: int, port: int, out_dir: str):
    torch.set_num_threads(1)
    os.environ.setdefault('GLOO_SOCKET_IFNAME', 'lo')   # keep gloo's own connections on loopback too
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=WORLD)
    try:
        from fastai.data.core import DataLoaders
        from fastai.data.load import DataLoader
        g = torch.Generator().manual_seed(100 + rank)          # each rank sees its own shard
        x = torch.randn(192, 3, 8, 8, generator=g)
        y = (x[:, 0].mean((1, 2)) > 0).long()
        ds = list(zip(x, y))
        dls = DataLoaders(DataLoader(ds[:128], bs=32, shuffle=True, drop_last=True), DataLoader(ds[128:], bs=32))
        res = {name: _scenario(rank, dls, validate, sync) for name, validate, sync in
               [('callback', True, None), ('callback_no_valid', False, None), ('unsynced_no_valid', False, False)]}
        torch.save(res, os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()

@pytest.fixture(scope='module')
def results(tmp_path_factory):
    "Spawn the two ranks once; every test reads what they saved."
    out = tmp_path_factory.mktemp('ddp')
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f'rank{r}.pt', weights_only=False) for r in range(WORLD)]

@pytest.mark.parametrize('scenario', ['callback', 'callback_no_valid'])
def test_ddp_fold_identical_and_exact(results, scenario):
    "The callback folds DDP's inner module on both ranks: folded weights agree bit for bit and match the unfolded model."
    for r in (res[scenario] for res in results):
        assert r['is_ddp'] and r['identity'] == 'Identity' and r['opt'] is None
        assert r['n_folded'] == 3
        assert r['same'], 'folded weights differ across ranks'
        assert r['err'] <= 10 * r['base'] + 1e-6, (r['err'], r['base'])

def test_ddp_statistics_differ_without_sync(results):
    "Why `fold_bn` syncs under DDP: when training ends on a training step, each rank keeps its own BatchNorm statistics."
    r0, r1 = (res['unsynced_no_valid'] for res in results)
    assert r0['stats_spread'] > 0 and not r0['same']
    for r in (r0, r1): assert r['err'] <= 10 * r['base'] + 1e-6   # each rank's own fold is still exact
    # a validation phase ends with DDP's buffer broadcast, so with a validation set they already agree
    assert results[0]['callback']['stats_spread'] == 0
