"""fastai's nbs/18a_callback.training.ipynb scenarios, on plain fastai and with `ReproducibleCallback(21)` in every
`Learner` (the `with_callback` fixture, conftest.py)."""
import math
import pytest, torch
from torch import nn
from fastai.callback.core import Callback
from fastai.callback.training import BnFreeze, GradientAccumulation, GradientClip, ShortEpochCallback
from fastai.test_utils import synth_dbunch, synth_learner
from fastai.torch_core import no_random, set_seed
from helpers import Tracer, close, quiet

pytestmark = pytest.mark.usefixtures('restore_globals') # in these files only: flags and figures put back after each

# mirrors nbs/18a_callback.training.ipynb, "ShortEpochCallback" (with and without a short validation)
@pytest.mark.parametrize('short_valid', [True, False])
def test_short_epoch(with_callback, short_valid):
    tracer = Tracer()
    learn = synth_learner(n_val=4, cbs=tracer)
    with quiet(learn): learn.fit(1, cbs=ShortEpochCallback(short_valid=short_valid))
    ev = tracer.events
    train_batches = ev[ev.index('before_train'):ev.index('after_train')].count('before_batch')
    valid_batches = ev[ev.index('before_validate'):ev.index('after_validate')].count('before_batch')
    assert train_batches == 2 and 'after_cancel_train' in ev
    assert valid_batches == (2 if short_valid else 4) and ('after_cancel_validate' in ev) == short_valid
    assert len(learn.recorder.values[-1]) == (0 if short_valid else 1)

class GetGrads(Callback):
    "Keeps a copy of the gradients at each step that is taken"
    run_valid, order = False, GradientAccumulation.order + 1
    def before_step(self): self.grads = [p.grad.detach().clone() for p in self.model.parameters()]

def accumulated(bs, n, cbs=()):
    "Train one epoch of `n` batches of `bs`: the train and valid losses and the gradients of the last step"
    with no_random(99):
        learn = synth_learner(data=synth_dbunch(bs=bs, n_train=n, n_valid=n), cbs=[GetGrads()] + list(cbs))
        with quiet(learn): learn.fit(1, lr=0.01)
    train, valid = learn.recorder.values[-1]
    return train, valid, learn.get_grads.grads

# mirrors nbs/18a_callback.training.ipynb, "GradientAccumulation" (same gradients as one big batch; no step at all
# when n_acc is never reached)
def test_gradient_accumulation(with_callback):
    train1, valid1, grads1 = accumulated(8, 1)
    train2, valid2, grads2 = accumulated(1, 8, [GradientAccumulation(n_acc=8)])
    assert all(close(g2, g1, 1e-5) for g1, g2 in zip(grads1, grads2))
    assert math.isclose(valid1, valid2, rel_tol=1e-5) and train1 != train2
    learn = synth_learner()
    before = learn.validate()[0]
    with quiet(learn): learn.fit(1, lr=0.01, cbs=GradientAccumulation(n_acc=1000))
    assert learn.recorder.values[-1][1] == before # the parameters never moved

class GradNorm(Callback):
    "After `GradientClip`: keeps the total gradient norm at each step"
    order = GradientClip.order + 1
    def before_fit(self): self.norms = []
    def before_step(self): self.norms.append(torch.norm(torch.stack([p.grad.norm() for p in self.model.parameters()])))

# mirrors nbs/18a_callback.training.ipynb, "GradientClip" (a too high learning rate diverges, clipping avoids it; on
# the CPU without fp16, so with a higher learning rate than the notebook's)
def test_gradient_clip(with_callback):
    set_seed(99)
    learn = synth_learner(lr=2.)
    with quiet(learn): learn.fit(3)
    diverged = learn.recorder.values[-1][1]
    set_seed(99)
    learn = synth_learner(lr=2., cbs=[GradientClip(), GradNorm()])
    start = learn.validate()[0]
    with quiet(learn): learn.fit(3)
    assert all(n <= 1 + 1e-5 for n in learn.grad_norm.norms) and len(learn.grad_norm.norms) == 30
    clipped = learn.recorder.values[-1][1]
    assert not diverged < 1e6, diverged # nan, inf or huge
    assert clipped < start, (clipped, start)

class BodyHead(nn.Module):
    "A body with a BatchNorm and a head, for the synthetic regression"
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(1, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.head = nn.Linear(8, 1)
    def forward(self, x): return self.head(self.body(x))

# mirrors nbs/18a_callback.training.ipynb, "BnFreeze" (frozen running statistics with train_bn=False)
@pytest.mark.parametrize('bn_freeze', [False, True])
def test_bn_freeze(with_callback, bn_freeze):
    learn = synth_learner(model=BodyHead(), splitter=lambda m: [list(m.body.parameters()), list(m.head.parameters())],
                          train_bn=False, cbs=[BnFreeze()] if bn_freeze else None)
    learn.freeze()
    bn = learn.model.body[1]
    mean = bn.running_mean.clone()
    with quiet(learn): learn.fit(1, lr=0.02)
    assert torch.equal(bn.running_mean, mean) == bn_freeze
