"""Issue 25 on the CPU: the default vision head's max pooling, deterministic by construction and bit-equal to torch's,
swapped in only while the callback locks determinism; and the cuBLAS warning only when torch really read its setting
too late (CUDA faked where it must be)."""
import warnings
import pytest, torch, torch.nn.functional as F
from torch import nn
from fastai.callback.core import Callback
from fastai.layers import AdaptiveConcatPool2d
from fastai.test_utils import synth_learner
import fastai_repro.callback as cbmod
from fastai_repro import determinism
from fastai_repro.all import ReproducibleCallback, ReproducibilityWarning
from fastai_repro.fastai_patches import GlobalMaxPool, deterministic_pools, global_max_pool, restore_pools

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

def bits(t:torch.Tensor) -> torch.Tensor:
    "The bits of `t` as integers: NaN equals NaN, -0 differs from +0"
    return t.detach().contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])

def inputs(dt) -> dict:
    "Random values, post-ReLU ties, -inf, NaN, signed zeros and a channels-last tensor, of dtype `dt`"
    torch.manual_seed(0)
    ties = torch.relu(torch.randn(4, 8, 5, 7)); ties[0, 0] = 0
    inf = torch.full((2, 3, 4, 4), float('-inf')); inf[0, 0, 1, 1] = 1
    nan = torch.randn(2, 3, 4, 4); nan[0, 0, 1, 1] = nan[0, 0, 2, 3] = nan[1, 2, 0, 0] = float('nan')
    zeros = torch.zeros(2, 3, 4, 4); zeros[0, 0, 0, 0] = zeros[1, 1, 1, 1] = -0.0
    return dict(random=torch.randn(4, 8, 5, 7).to(dt), ties=ties.to(dt), inf=inf.to(dt), nan=nan.to(dt),
                zeros=zeros.to(dt), channels_last=torch.randn(4, 8, 5, 7).to(dt).to(memory_format=torch.channels_last))

@pytest.mark.parametrize('dt', DTYPES)
@pytest.mark.parametrize('case', ['random', 'ties', 'inf', 'nan', 'zeros', 'channels_last'])
def test_the_pool_is_torchs_bit_for_bit(dt, case):
    x = inputs(dt)[case]
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = F.adaptive_max_pool2d(a, 1), GlobalMaxPool.apply(b)
    g = torch.randn(ya.shape).to(dt)
    ya.backward(g); yb.backward(g)
    assert torch.equal(bits(ya), bits(yb)) and ya.stride() == yb.stride()
    assert torch.equal(bits(a.grad), bits(b.grad)) and a.grad.stride() == b.grad.stride()

def test_the_comparison_can_fail():
    "The contrast: the mean pool, or a gradient sent to another tie, is told apart"
    x = inputs(torch.float32)['ties'].requires_grad_()
    assert not torch.equal(bits(F.adaptive_max_pool2d(x, 1)), bits(F.adaptive_avg_pool2d(x, 1)))
    a, b = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    F.adaptive_max_pool2d(a, 1).sum().backward()
    flat = b.flatten(2)
    idx = flat.shape[2] - 1 - flat.flip(2).argmax(2, keepdim=True) # the last maximum, not the first
    flat.gather(2, idx).sum().backward()
    assert not torch.equal(bits(a.grad), bits(b.grad))

class Looks(Callback):
    "Notes, at each batch, whether fastai's head pooling has the deterministic forward; crashes if `Looks.crash`"
    crash = False
    def before_fit(self): self.seen = getattr(self, 'seen', [])
    def before_batch(self):
        self.seen.append(self.learn.model[2].mp.__dict__.get('forward') is global_max_pool)
        if Looks.crash: raise RuntimeError('crash')

class Image(nn.Module):
    "The synthetic data's numbers as 2 × 2 images of one channel"
    def forward(self, x): return x.view(-1, 1, 1, 1).expand(-1, 1, 2, 2)

def head_learner(**kw):
    "A learner whose model ends in fastai's `AdaptiveConcatPool2d`, with the callback and `Looks`"
    learn = synth_learner(cbs=[ReproducibleCallback(21, **kw), Looks()])
    learn.model = nn.Sequential(Image(), nn.Conv2d(1, 4, 1), AdaptiveConcatPool2d(), nn.Flatten(), nn.Linear(8, 1))
    return learn

def test_swapped_only_inside_locked_fits():
    learn = head_learner()
    mp = learn.model[2].mp
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', ReproducibilityWarning) # the model was built after the callback: no matter
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
        assert all(learn.looks.seen) and learn.looks.seen # in every batch of the fit
        assert 'forward' not in mp.__dict__ # after it: as before
        learn.get_preds()
        assert 'forward' not in mp.__dict__
        Looks.crash = True
        try:
            with learn.no_bar(), learn.no_logging(), pytest.raises(RuntimeError, match='crash'): learn.fit(1)
        finally: Looks.crash = False
        assert 'forward' not in mp.__dict__ # after a crash too
        off = head_learner(deterministic=False)
        with off.no_bar(), off.no_logging(): off.fit(1)
    assert off.looks.seen and not any(off.looks.seen) # determinism not locked: torch's own

def test_a_pool_of_another_size_or_own_forward_is_left_alone():
    m = nn.Sequential(nn.AdaptiveMaxPool2d(2), nn.AdaptiveMaxPool2d((1, 1)),
                      nn.AdaptiveMaxPool2d(1, return_indices=True))
    own = nn.AdaptiveMaxPool2d(1); own.forward = lambda x: x
    m.append(own)
    mods = deterministic_pools(m)
    assert mods == [m[1]]
    restore_pools(mods)
    assert 'forward' not in m[1].__dict__ and 'forward' in own.__dict__

def test_no_cublas_warning_without_a_late_product(monkeypatch):
    "CUDA started (faked) but no product before the setting: the warning the old check gave on every GPU run is gone"
    probes = []
    monkeypatch.setattr(determinism, '_cublas_probe', lambda: probes.append(1) or False)
    monkeypatch.setattr(torch.cuda, 'is_initialized', lambda: True) # what the old check looked at
    learn = synth_learner(cbs=ReproducibleCallback(21))
    with warnings.catch_warnings():
        warnings.simplefilter('error', ReproducibilityWarning)
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert probes == [] # no GPU here: nothing to probe
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    assert determinism.cublas_late() is False and probes == [1] # a GPU: torch is asked

def test_cublas_warning_once_when_torch_read_it_late(monkeypatch):
    monkeypatch.setattr(cbmod, 'cublas_late', lambda: True) # what the probe says on a GPU that ran a product early
    learn = synth_learner(cbs=ReproducibleCallback(21))
    with pytest.warns(ReproducibilityWarning, match='a matrix product ran on the GPU before CUBLAS_WORKSPACE_CONFIG'):
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
    with warnings.catch_warnings():
        warnings.simplefilter('error', ReproducibilityWarning)
        with learn.no_bar(), learn.no_logging(): learn.fit(1) # said once
    assert [e['event'] for e in learn.reproducible.record.events].count('cublas_late') == 1
