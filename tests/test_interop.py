"""Folded torchvision models go through ONNX (and onnxruntime) and `torch.export` unchanged.

Both ONNX exporters fuse Conv+BatchNorm on their own in eval mode, so "no BatchNormalization node" alone would not show that
the *fold* removed them. The check therefore exports with the TorchScript exporter in `TrainingMode.PRESERVE`, which keeps
BatchNorm nodes as they are (the unfolded model shows them), and runs the default exporter for the onnxruntime comparison.
"""
import io, warnings
import numpy as np, pytest, torch
from fasterbn.folder import BN_Folder, randomize_bn

onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')
torchvision = pytest.importorskip('torchvision')

ARCHS = ['resnet50', 'mobilenet_v2']
SHAPE = (1, 3, 96, 96)

@pytest.fixture(scope='module', params=ARCHS)
def models(request):
    torch.manual_seed(0)
    model = randomize_bn(torchvision.models.get_model(request.param, weights=None)).eval()
    folder = BN_Folder(check=False)   # the planner's own verdict: every BatchNorm folded, and outputs compared below
    folded = folder.fold(model, example_inputs=torch.randn(SHAPE))
    assert folder.report.n_not_folded == 0, folder.report
    return request.param, model, folded

def _onnx_ops(model, x, **kw) -> tuple[list[str], bytes]:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(model, (x,), buf, dynamo=False, **kw)
    return [n.op_type for n in onnx.load_from_string(buf.getvalue()).graph.node], buf.getvalue()

def _ort_run(model_bytes: bytes, x: torch.Tensor) -> np.ndarray:
    sess = ort.InferenceSession(model_bytes, providers=['CPUExecutionProvider'])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]

def _assert_close_rel(a, b, rel=1e-5):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(np.abs(b).max(), 1.0)
    assert np.abs(a - b).max() <= rel * scale, f'max abs diff {np.abs(a - b).max():.3g} for outputs up to {scale:.3g}'

def test_onnx_no_batchnorm_same_outputs(models):
    name, model, folded = models
    x = torch.randn(SHAPE)
    preserve = dict(training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    ops_orig, _ = _onnx_ops(model, x, **preserve)
    ops_fold, data = _onnx_ops(folded, x, **preserve)
    assert ops_orig.count('BatchNormalization') > 0, 'control: the unfolded export should keep its BatchNorm nodes'
    assert ops_fold.count('BatchNormalization') == 0, f'{name}: {ops_fold.count("BatchNormalization")} BatchNormalization nodes left'
    with torch.no_grad(): ref_folded, ref_orig = folded(x).numpy(), model(x).numpy()
    out = _ort_run(data, x)
    _assert_close_rel(out, ref_folded)
    _assert_close_rel(out, ref_orig)

def test_onnx_default_exporter(models):
    "The exporter torch uses by default (torch.export-based from torch 2.9; needs onnxscript)."
    pytest.importorskip('onnxscript')
    name, model, folded = models
    x = torch.randn(SHAPE)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        prog = torch.onnx.export(folded, (x,), dynamo=True, verbose=False)
    proto = prog.model_proto
    assert not any(n.op_type == 'BatchNormalization' for n in proto.graph.node)
    out = _ort_run(proto.SerializeToString(), x)
    with torch.no_grad(): _assert_close_rel(out, model(x).numpy())

def test_torch_export(models):
    name, model, folded = models
    x = torch.randn(SHAPE)
    ep = torch.export.export(folded, (x,))
    assert not [n for n in ep.graph.nodes if 'batch_norm' in str(n.target)], f'{name}: batch_norm ops left in the exported graph'
    assert any('batch_norm' in str(n.target) for n in torch.export.export(model, (x,)).graph.nodes), 'control: the unfolded graph has them'
    with torch.no_grad(): _assert_close_rel(ep.module()(x).numpy(), model(x).numpy())
