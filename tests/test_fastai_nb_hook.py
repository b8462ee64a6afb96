"""fastai's nbs/15_callback.hook.ipynb scenarios, on plain fastai and with `ReproducibleCallback(21)` in every
`Learner` (the `with_callback` fixture, conftest.py). The only assertion that differs between the two runs: the
"Callbacks:" list of `learn.summary()` in `test_summary` names `ReproducibleCallback` first."""
import math
import pytest, torch
import torch.nn.functional as F
from torch import nn
from fastai.callback.core import Callback
from fastai.callback.hook import (ActivationStats, Hook, HookCallback, dummy_eval, hook_output, hook_outputs,
                                  layer_info, model_sizes, num_features_model)
from fastai.test_utils import synth_learner
from helpers import close, quiet, vision_learner_on

pytestmark = pytest.mark.usefixtures('restore_globals') # in these files only: flags and figures put back after each

class KeepOutput(HookCallback):
    "Checks after each batch that the stored forward output of the model is the prediction"
    def hook(self, m, i, o): return o
    def before_fit(self):
        super().before_fit()
        self.same = []
    def after_batch(self): self.same.append(torch.equal(self.hooks.stored[0], self.pred.detach()))

class KeepGrad(HookCallback):
    "Checks after each training batch that the stored gradient of the output is the MSE's"
    def __init__(self): super().__init__(is_forward=False, cpu=False)
    def hook(self, m, i, o): return o
    def before_fit(self):
        super().before_fit()
        self.same = []
    def after_batch(self):
        if self.training:
            self.same.append(close(self.hooks.stored[0][0], 2*(self.pred - self.y).detach()/self.pred.numel(), 1e-6))

# mirrors nbs/15_callback.hook.ipynb, "HookCallback" (forward and backward hooks on the model in a fit)
@pytest.mark.filterwarnings('ignore:You are shadowing an attribute')
def test_hook_callback(with_callback):
    learn = synth_learner(n_trn=5, cbs=KeepOutput())
    with quiet(learn): learn.fit(1)
    assert len(learn.keep_output.same) == 5 + 2 and all(learn.keep_output.same)
    learn = synth_learner(n_trn=5, cbs=KeepGrad())
    with quiet(learn): learn.fit(1)
    assert len(learn.keep_grad.same) == 5 and all(learn.keep_grad.same)

def mlp():
    "The notebook's small regression network with a BatchNorm"
    return nn.Sequential(nn.Linear(1, 50), nn.ReLU(), nn.BatchNorm1d(50), nn.Linear(50, 1))

class MeanStd(HookCallback):
    "Keeps the mean and std of the first hooked module's output at each training batch"
    def hook(self, m, i, o): return o
    def before_fit(self):
        super().before_fit()
        self.means, self.stds = [], []
    def after_batch(self):
        if self.training:
            self.means.append(self.hooks.stored[0].mean().item())
            self.stds.append(self.hooks.stored[0].std().item())

# mirrors nbs/15_callback.hook.ipynb, "Activation graphs" (ActivationStats: every, include_paramless, the statistics)
@pytest.mark.filterwarnings('ignore:You are shadowing an attribute')
def test_activation_stats(with_callback):
    for n_trn in (11, 13):
        for every in (1, 4):
            learn = synth_learner(n_trn=n_trn, cbs=ActivationStats(every=every))
            with quiet(learn): learn.fit(1)
            assert len(learn.activation_stats.stats) == math.ceil(n_trn/every)
    for paramless, n_modules in ((False, 3), (True, 5)):
        learn = synth_learner(model=nn.Sequential(*mlp(), nn.Flatten()), cbs=ActivationStats(every=4,
                              include_paramless=paramless))
        with quiet(learn): learn.fit(1)
        assert len(learn.activation_stats.modules) == n_modules
    learn = synth_learner(n_trn=5, cbs=[MeanStd(), ActivationStats()])
    with quiet(learn): learn.fit(1)
    stats = learn.activation_stats.stats.itemgot(0)
    assert list(stats.itemgot('mean')) == learn.mean_std.means and list(stats.itemgot('std')) == learn.mean_std.stds

class LastStep(Callback):
    "Keeps the predictions, targets and last layer's weight of the last training batch before its step"
    def after_loss(self):
        if self.training:
            self.kept = (self.pred.detach().clone(), self.y.clone(), self.model[2].weight.detach().clone())

# mirrors nbs/15_callback.hook.ipynb, "Hook", "hook_output", "Hooks", "hook_outputs" (forward and gradient hooks on
# a learner's model, in get_preds and in a fit; removal)
def test_hooks_on_a_learners_model(with_callback):
    layers = [nn.Linear(1, 10), nn.ReLU(), nn.Linear(10, 1)]
    learn = synth_learner(n_trn=1, model=nn.Sequential(*layers), cbs=LastStep())
    x = torch.randn(8, 1)
    with hook_outputs(layers) as h, hook_output(layers[0]) as h0, Hook(layers[2], lambda m, i, o: (i[0], o)) as h2:
        preds, _ = learn.get_preds(dl=[(x, 2*x + 3)])
        with torch.no_grad(): first = layers[0](x)
        assert torch.equal(h.stored[0], first) and torch.equal(h.stored[1], F.relu(first))
        assert torch.equal(h.stored[2], preds) and torch.equal(h0.stored, first)
        assert all(not s.requires_grad for s in h.stored)
        inp, out = h2.stored
        assert torch.equal(inp, F.relu(first)) and torch.equal(out, preds)
    assert h.hooks[0].removed and h0.removed and h2.removed
    stored = h.stored[2]
    learn.get_preds(dl=[(x, 2*x + 3)])
    assert h.stored[2] is stored # removed hooks store nothing
    with hook_outputs(layers, grad=True) as g:
        with quiet(learn): learn.fit(1)
        pred, y, w2 = learn.last_step.kept
        g2 = 2*(pred - y)/pred.numel()
        assert close(g.stored[2][0], g2, 1e-6) and close(g.stored[1][0], g2 @ w2, 1e-6)

# mirrors nbs/15_callback.hook.ipynb, "model_sizes", "num_features_model", "dummy_eval" (on a learner's trained model)
def test_model_sizes(with_callback, vision_dls):
    learn = vision_learner_on(vision_dls())
    with quiet(learn): learn.fit(1)
    body = learn.model[:4]
    assert [list(s) for s in model_sizes(body, size=(32, 32))] == [[1, 8, 15, 15]]*3 + [[1, 8, 1, 1]]
    assert num_features_model(body) == 8
    assert dummy_eval(body, size=(32, 32)).shape == (1, 8, 1, 1) and not body.training
    m = nn.Sequential(nn.Conv2d(5, 4, 3), nn.Conv2d(4, 3, 3))
    assert num_features_model(m) == 3

# mirrors nbs/15_callback.hook.ipynb, "Model summary" (layer_info, summary)
def test_summary(with_callback):
    learn = synth_learner(model=mlp())
    info = [(t, p, tr, list(s), same) for t, p, tr, s, same in layer_info(learn, torch.randn(16, 1))]
    assert info == [('Linear', 100, True, [1, 50], False), ('ReLU', '', '', [1, 50], True),
                    ('BatchNorm1d', 100, True, [1, 50], True), ('Linear', 51, True, [1, 1], False)]
    s = learn.summary()
    assert 'Sequential (Input shape: 16 x 1)' in s and 'Total params: 251' in s and 'Total trainable params: 251' in s
    assert 'Total non-trainable params: 0' in s and 'Loss function: FlattenedLoss of MSELoss()' in s
    listed = [l.strip()[2:] for l in s.split('Callbacks:')[1].strip().splitlines()]
    first = ['ReproducibleCallback'] if with_callback else [] # allowed difference: the callback is listed
    assert listed == first + ['TrainEvalCallback', 'CastToTensor', 'Recorder', 'ProgressCallback']
