"""Property-based test: random small networks, folded, must match a float64 reference on every example.

`make test` runs a few hundred examples. For thousands:  HYPOTHESIS_PROFILE=thorough [HYPOTHESIS_EXAMPLES=5000] .venv/bin/python -m pytest tests/test_property.py
"""
import os, pytest, torch, torch.nn as nn
from hypothesis import given, settings, strategies as st, HealthCheck, event
from conftest import fold_and_check

settings.register_profile('ci', max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
settings.register_profile('thorough', max_examples=int(os.environ.get('HYPOTHESIS_EXAMPLES', 5000)), deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'ci'))

def _divisors(n): return [g for g in range(1, n + 1) if n % g == 0]

class RandomNet(nn.Module):
    "A straight-line net of blocks; `plan` is a list of (kind, module names), interpreted in forward (fx traces the loop)."
    def __init__(self): super().__init__(); self.plan = []
    def add(self, kind, **mods):
        for k, m in mods.items(): self.add_module(f'{k}{len(self.plan)}', m)
        self.plan.append((kind, [f'{k}{len(self.plan)}' for k in mods]))
    def forward(self, x):
        for kind, names in self.plan:
            m = [getattr(self, n) for n in names]
            if kind == 'seq': x = m[0](x)
            elif kind == 'cat': x = torch.cat([m[0](x), m[1](x)], 1)
            elif kind == 'add': x = m[0](x) + m[1](x)
            elif kind == 'skip': x = m[0](x) + x
            elif kind == 'flatten': x = torch.flatten(x, 1)
        return x

@st.composite
def conv_spec(draw, c_in, size):
    "A Conv2d or ConvTranspose2d that reads `c_in` channels of a `size` map, and the size it outputs."
    transposed = draw(st.booleans()) and size <= 6
    c_out = draw(st.integers(1, 6))
    g = draw(st.sampled_from([d for d in _divisors(c_in) if c_out % d == 0]))
    k = draw(st.integers(1, 3)); stride = draw(st.sampled_from([1, 2]))
    bias = draw(st.booleans())
    if transposed:
        conv = nn.ConvTranspose2d(c_in, c_out, k, stride=stride, groups=g, bias=bias)
        return conv, (size - 1) * stride + k
    pad = draw(st.integers(0, min(1, size - 1)))
    mode = draw(st.sampled_from(['zeros', 'reflect', 'replicate', 'circular'])) if pad else 'zeros'
    if size + 2 * pad < k: k = 1
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad, padding_mode=mode, groups=g, bias=bias, dilation=1)
    return conv, (size + 2 * pad - k) // stride + 1

@st.composite
def random_net(draw):
    c, size = draw(st.integers(1, 4)), draw(st.integers(4, 8))
    net, x = RandomNet(), torch.randn(2, c, size, size)
    for _ in range(draw(st.integers(1, 7))):
        kind = draw(st.sampled_from(['conv', 'conv', 'conv', 'bn', 'bn', 'relu', 'dropout', 'identity', 'cat', 'add', 'skip']))
        if kind == 'conv':
            conv, new = draw(conv_spec(c, size))
            net.add('seq', m=conv); c, size = conv.out_channels, new
        elif kind == 'bn': net.add('seq', m=nn.BatchNorm2d(c, affine=draw(st.booleans())))
        elif kind == 'relu': net.add('seq', m=nn.ReLU())
        elif kind == 'dropout': net.add('seq', m=nn.Dropout2d(.3) if draw(st.booleans()) else nn.Dropout(.3))
        elif kind == 'identity': net.add('seq', m=nn.Identity())
        elif kind in ('cat', 'add'):
            a_out, b_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
            if kind == 'add': b_out = a_out
            k = draw(st.sampled_from([1, 3])) if size >= 3 else 1
            a, b = nn.Conv2d(c, a_out, k, padding=k // 2), nn.Conv2d(c, b_out, k, padding=k // 2, bias=draw(st.booleans()))
            net.add(kind, a=a, b=b); c = a_out + b_out if kind == 'cat' else a_out
        elif kind == 'skip': net.add('skip', m=nn.Conv2d(c, c, 1))
        if kind in ('cat', 'add', 'conv', 'skip') and draw(st.booleans()): net.add('seq', m=nn.BatchNorm2d(c))
    if draw(st.booleans()):   # a head: flatten, then Linear / BatchNorm1d / ReLU / Dropout
        net.add('flatten'); f = c * size * size
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(['linear', 'bn', 'relu', 'dropout']))
            if kind == 'linear':
                out = draw(st.integers(1, 6)); net.add('seq', m=nn.Linear(f, out, bias=draw(st.booleans()))); f = out
            elif kind == 'bn': net.add('seq', m=nn.BatchNorm1d(f))
            elif kind == 'relu': net.add('seq', m=nn.ReLU())
            else: net.add('seq', m=nn.Dropout(.2))
    return net, x

@given(random_net(), st.booleans(), st.booleans(), st.integers(0, 2**16))
def test_random_networks_fold_exactly(net_x, example, backward, seed):
    net, x = net_x
    torch.manual_seed(seed)
    for m in net.modules():   # random weights too, so a wrong fold can't hide behind a symmetric init
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)): nn.init.normal_(m.weight, std=.5)
    _, report = fold_and_check(net, x, example=example, seed=seed, backward=backward)
    event(f'folded {report.n_folded} of {len(report)}')
