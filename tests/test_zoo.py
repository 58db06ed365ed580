"""Real architectures, built without weights and with non-trivial BatchNorm statistics: exact outputs, and the expected counts.

The expected forward-fold count is computed here independently of fasterbn's planner: a BatchNorm whose input is the output of a
Conv/ConvTranspose/Linear call with no other user (a plain torch.fx pass, leaves decided with isinstance)."""
import warnings, pytest, torch, torch.nn as nn, torch.fx as fx
import torchvision.models as tvm
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from fasterbn.folder import BN_Folder, randomize_bn
from conftest import fold_and_check, n_batchnorms, errors

warnings.filterwarnings('ignore')

class _Leaves(fx.Tracer):
    def is_leaf_module(self, m, qn): return isinstance(m, (_BatchNorm, _ConvNd, nn.Linear)) or super().is_leaf_module(m, qn)

def direct_pairs(model):
    "BatchNorms that directly follow a Conv/Linear whose output has no other user."
    g, mods = _Leaves().trace(model), dict(model.named_modules())
    return sum(1 for n in g.nodes if n.op == 'call_module' and isinstance(mods[n.target], _BatchNorm)
               and (p := n.args[0]).op == 'call_module' and isinstance(mods[p.target], (_ConvNd, nn.Linear)) and len(p.users) == 1)

ZOO = {  # name: (builder, input size, expected folded, expected total)
    'resnet18': (lambda: tvm.resnet18(weights=None), 64, 20, 20),
    'resnet50': (lambda: tvm.resnet50(weights=None), 64, 53, 53),
    'resnext50_32x4d': (lambda: tvm.resnext50_32x4d(weights=None), 64, 53, 53),
    'mobilenet_v2': (lambda: tvm.mobilenet_v2(weights=None), 64, 52, 52),
    'mobilenet_v3_large': (lambda: tvm.mobilenet_v3_large(weights=None), 64, 46, 46),
    'efficientnet_b0': (lambda: tvm.efficientnet_b0(weights=None), 64, 49, 49),
    'regnet_y_400mf': (lambda: tvm.regnet_y_400mf(weights=None), 64, 53, 53),
    'shufflenet_v2_x1_0': (lambda: tvm.shufflenet_v2_x1_0(weights=None), 64, 56, 56),
    'densenet121': (lambda: tvm.densenet121(weights=None), 64, 59, 121),
    'inception_v3': (lambda: tvm.inception_v3(weights=None, aux_logits=False, init_weights=False), 96, 94, 94),
    'googlenet': (lambda: tvm.googlenet(weights=None, aux_logits=False, init_weights=False), 64, 57, 57),
    'vgg11_bn': (lambda: tvm.vgg11_bn(weights=None), 64, 8, 8),
    'lraspp_mobilenet_v3_large': (lambda: tvm.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None), 64, 47, 47),
}

@pytest.mark.parametrize('name', list(ZOO))
def test_torchvision(name):
    build, size, n_folded, n_total = ZOO[name]
    torch.manual_seed(0)
    model = build()
    x = torch.randn(2, 3, size, size)
    _, report = fold_and_check(model, x, example=False)
    assert (report.n_folded, len(report)) == (n_folded, n_total) == (direct_pairs(model), n_batchnorms(model)), report.summary()

def test_densenet_with_example_inputs_leaves_only_concat_bn_relu():
    model = tvm.densenet121(weights=None)
    _, report = fold_and_check(model, torch.randn(2, 3, 64, 64))
    assert report.n_not_folded == 62
    assert all('cat' in r.reason for r in report.not_folded)

def test_r3d_18_subclassed_conv3d():
    # torchvision's video convs subclass nn.Conv3d outside torch.nn: fx's default tracer inlines them and sees only 4 of 20 BNs
    model = tvm.video.r3d_18(weights=None)
    _, report = fold_and_check(model, torch.randn(1, 3, 4, 32, 32), example=False)
    assert report.n_folded == 20 == len(report)

def test_maxvit_t_folds_all_with_backward_into_1x1():
    model = tvm.maxvit_t(weights=None)
    _, report = fold_and_check(model, torch.randn(1, 3, 224, 224))
    assert report.n_folded == 34 == len(report)
    backward = [r for r in report.folded if r.direction == 'backward']
    assert len(backward) == 11

def test_fasterrcnn_backbone_through_submodule_fallback():
    model = tvm.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    randomize_bn(model); model.eval()
    x = torch.rand(1, 3, 96, 96)
    folder = BN_Folder(check=False)
    folded = folder.fold(model)   # the root does not trace, but its code only calls `backbone` (and its methods only call theirs)
    assert '' in folder.report.untraceable and 'TraceError' in folder.report.untraceable['']
    assert folder.report.n_folded == 53 == len(folder.report), folder.report
    err, base = errors(model.backbone, folded.backbone, x)
    assert err <= 10 * base + 1e-6
    folded = folder.fold(model, example_inputs=([x[0]],))   # with example_inputs too
    assert folder.report.n_folded == 53 == len(folder.report)
    err, base = errors(model.backbone, folded.backbone, x)
    assert err <= 10 * base + 1e-6

def test_fastai_vision_model_head_folds_without_example_inputs():
    pytest.importorskip('fastai')
    from fastai.vision.learner import create_vision_model
    model = create_vision_model(tvm.resnet18, 10, pretrained=False)
    _, report = fold_and_check(model, torch.randn(2, 3, 64, 64), example=False)
    assert report.n_folded == 22 == len(report)

def test_fastai_xresnet50():
    pytest.importorskip('fastai')
    from fastai.vision.models.xresnet import xresnet50
    _, report = fold_and_check(xresnet50(n_out=10), torch.randn(2, 3, 64, 64), example=False)
    assert report.n_folded == len(report)

def test_fastai_tabular_model():
    pytest.importorskip('fastai')
    from fastai.tabular.model import TabularModel
    model = TabularModel([(10, 4), (5, 3)], 3, 2, [20, 10])
    _, report = fold_and_check(model, torch.randint(0, 5, (6, 2)), torch.randn(6, 3))
    assert report.n_folded == 3 == len(report)

def test_fastai_unet_through_submodule_fallback():
    pytest.importorskip('fastai')
    from fastai.vision.learner import create_unet_model
    model = create_unet_model(tvm.resnet34, 2, (64, 64), pretrained=False)
    _, report = fold_and_check(model, torch.randn(1, 3, 64, 64))
    assert report.untraceable and report.n_folded >= 36
    # the decoder's BatchNorms read a tensor a hook stored (`self.hook.stored`): the graph shows a constant, no layer
    assert all(r.kind in ('untraceable', 'no-layer') for r in report.not_folded), report

def test_timm_batchnormact():
    timm = pytest.importorskip('timm')
    model = timm.create_model('efficientnet_b0', pretrained=False)
    folded, report = fold_and_check(model, torch.randn(2, 3, 64, 64), example=False)
    assert report.n_folded == len(report) == 49
    assert not any(type(m).__name__ == 'BatchNormAct2d' for m in folded.modules())
