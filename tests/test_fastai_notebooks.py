"""The scenarios of fastai's own notebook tests (13a learner, 14 schedule, 15 hooks, 16 progress, 17 trackers,
18a training callbacks) with `ReproducibleCallback(21)` added to every `Learner`, and the rule that the callback is
invisible outside training fits.

Every scenario test takes the `with_callback` fixture: False runs it on plain fastai (the contrast that shows the
scenario itself is sound), True appends `ReproducibleCallback(21)` to the `cbs` of every `Learner` built during that
test. Both must pass. The tests are written here from what the notebooks check; no notebook cell is copied.

The only assertions that differ between the two runs are those on the number or names of `learn.cbs`:
- `test_callback_handling`: `len(learn.cbs)` counts one more callback, and `learn.ordered_cbs('before_fit')` and
  `learn.show_training_loop()` list `ReproducibleCallback` first for `before_fit`;
- `test_summary`: the "Callbacks:" list of `learn.summary()` names `ReproducibleCallback` first.

The invisibility tests (callback always on, built with `ReproducibleCallback(21, compare_previous=False)` in the call
that builds the learner) take each inference-like entry point X (`get_preds`, `predict`, `validate`, `tta`,
`show_results`, `summary`, `with learn:`, `learn(['before_fit', 'before_epoch'])` fired by hand as the 13a notebook
does before a fit, `lr_find`) and check
- that X leaves Python's, NumPy's and torch's generators, every loader's `rng`, `learn.reproducible.n_fit` and the
  determinism flags as they were;
- that `fit; X; fit` ends with weights bit-identical to `fit; fit`.
"""
import functools, inspect, math, re, warnings
from contextlib import contextmanager
from functools import partial
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np, pytest, torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader as TorchDL, TensorDataset
from fastcore.foundation import L
from fastcore.test import equals
from fastai.callback.core import Callback, TrainEvalCallback
from fastai.callback.hook import (ActivationStats, Hook, HookCallback, dummy_eval, hook_output, hook_outputs,
                                  layer_info, model_sizes, num_features_model)
from fastai.callback.progress import CSVLogger, ShowGraphCallback
from fastai.callback.schedule import LRFinder, ParamScheduler, SchedExp, SchedLin, SchedCos, combined_cos
from fastai.callback.tracker import (EarlyStoppingCallback, ReduceLROnPlateau, SaveModelCallback,
                                     TerminateOnNaNCallback, TrackerCallback)
from fastai.callback.training import BnFreeze, GradientAccumulation, GradientClip, ShortEpochCallback
from fastai.data.all import DataLoaders, Datasets, TfmdDL, Transform, noop
from fastai.learner import Learner, defaults
from fastai.losses import BCEWithLogitsLossFlat, CrossEntropyLossFlat, MSELossFlat
from fastai.optimizer import SGD
from fastai.test_utils import RegModel, synth_dbunch, synth_learner
from fastai.torch_core import no_random, set_seed
from fastai_repro.all import ReproducibleCallback, ReproducibilityWarning
from fastai_repro.seeding import get_rng_state
from fastai_repro.determinism import determinism_flags, set_determinism_flags

ATTACHED_LATE = 'ReproducibleCallback: the model was built before ReproducibleCallback seeded'
TRAIN_BATCH = ['before_batch', 'after_pred', 'after_loss', 'before_backward', 'after_backward', 'before_step',
               'after_step', 'after_batch'] # fastai 2.8 sends after_backward too
VALID_BATCH = ['before_batch', 'after_pred', 'after_loss', 'after_batch']
CBS_BEFORE_FIT = ['TrainEvalCallback', 'Recorder', 'ProgressCallback'] # fastai's defaults that act at `before_fit`

# ------------------------------------------------------------------------------------------------------------------
# Fixtures and helpers

@pytest.fixture(params=[False, True])
def with_callback(request, monkeypatch):
    "For this test only (param True), every `Learner` built gets `ReproducibleCallback(21)` appended to its `cbs`"
    if request.param:
        init = Learner.__init__
        sig = inspect.signature(init)
        @functools.wraps(init)
        def _init(self, *args, **kwargs):
            "`Learner.__init__` with `ReproducibleCallback(21)` appended to `cbs`"
            ba = sig.bind(self, *args, **kwargs)
            ba.arguments['cbs'] = L(ba.arguments.get('cbs')) + [ReproducibleCallback(21)]
            with warnings.catch_warnings(): # built inside `Learner.__init__`, after the model: expected here
                warnings.filterwarnings('ignore', message=ATTACHED_LATE, category=ReproducibilityWarning)
                init(*ba.args, **ba.kwargs)
        monkeypatch.setattr(Learner, '__init__', _init)
    return request.param

@pytest.fixture(autouse=True)
def restore_globals():
    "Whatever a scenario leaves behind (determinism flags of a fit opened by hand, figures), the next test starts clean"
    flags = determinism_flags()
    yield
    set_determinism_flags(flags)
    plt.close('all')

@contextmanager
def quiet(learn):
    "No progress bar and no printed metrics"
    with learn.no_bar(), learn.no_logging(): yield learn

class Tracer(Callback):
    "Keeps the name of every event the learner sends, in order"
    order = 99
    def __init__(self): self.events = []
    def __call__(self, event_name):
        self.events.append(event_name)
        return super().__call__(event_name)

def mse_metric(out, targ):
    "A metric that is the loss itself"
    return F.mse_loss(out, targ)

def close(a, b, eps=1e-5) -> bool:
    "Element-wise closeness of numbers, lists or tensors"
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), atol=eps,
                          rtol=eps)

def torch_dbunch(bs=16, n_train=10, n_valid=2):
    "`synth_dbunch`'s regression data in plain PyTorch `DataLoader`s"
    def ds(n):
        "A y = 2x + 3 data set of `bs*n` points with a little noise"
        x = torch.randn(bs*n, 1)
        return TensorDataset(x, 2*x + 3 + 0.1*torch.randn(bs*n, 1))
    return DataLoaders(TorchDL(ds(n_train), batch_size=bs, shuffle=True), TorchDL(ds(n_valid), batch_size=bs))

class Line(Transform):
    "The synthetic target of an input: 2x + 3"
    def encodes(self, x): return 2*x + 3

def line_dls(n_train=160, n_valid=32, bs=16):
    "Regression data as a fastai `Datasets` (so `predict`, `tta` and `summary` work): random x, target 2x + 3"
    items = list(torch.randn(n_train + n_valid, 1).numpy()) # NumPy arrays: what `test_dl` checks new items against
    splits = [list(range(n_train)), list(range(n_train, n_train + n_valid))]
    return Datasets(items, tfms=[[noop], [Line()]], splits=splits).dataloaders(bs=bs)

def tiny_cnn():
    "A small image classifier with Dropout (it draws random numbers in training)"
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Dropout(0.2), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 2))

def vision_learner_on(dls, cbs=None):
    "A `Learner` with `tiny_cnn` on the digits loaders"
    return Learner(dls, tiny_cnn(), loss_func=CrossEntropyLossFlat(), cbs=cbs)

# ------------------------------------------------------------------------------------------------------------------
# nbs/13a_learner.ipynb

# mirrors nbs/13a_learner.ipynb, "Training loop" (a few epochs make the model better; also with raw PyTorch loaders)
@pytest.mark.parametrize('loaders', ['fastai', 'torch'])
def test_training_makes_the_model_better(with_callback, loaders):
    learn = synth_learner(data=synth_dbunch() if loaders == 'fastai' else torch_dbunch(), lr=0.1)
    learn(['before_fit', 'before_epoch']) # as in the notebook, fired by hand before the fit
    xb, yb = next(iter(learn.dls.valid))
    init_loss = learn.loss_func(learn.model(xb), yb).item()
    with quiet(learn): learn.fit(10)
    final_loss = learn.loss_func(learn.model(xb), yb).item()
    assert final_loss < init_loss / 10, (final_loss, init_loss)
    assert len(learn.recorder.values) == 10

class TrainEvalProbe(Callback):
    "Records the training flags and counters `TrainEvalCallback` keeps, to check them after the fit"
    order = TrainEvalCallback.order + 1
    def before_fit(self): self.start, self.steps, self.phases = (self.pct_train, self.train_iter), [], []
    def before_train(self): self.phases.append(('train', self.training, self.model.training, self.pct_train))
    def before_validate(self): self.phases.append(('valid', self.training, self.model.training, self.pct_train))
    def after_batch(self):
        if self.training: self.steps.append((self.pct_train, self.train_iter))

# mirrors nbs/13a_learner.ipynb, "Training loop" (TrainEvalCallback: training flags, pct_train, train_iter)
def test_train_eval_callback(with_callback):
    learn = synth_learner(n_trn=5, cbs=TrainEvalProbe())
    with quiet(learn): learn.fit(2)
    p, n = learn.train_eval_probe, 5*2
    assert p.start == (0., 0)
    assert [i for _, i in p.steps] == list(range(1, n + 1))
    assert close([pct for pct, _ in p.steps], [i/n for i in range(1, n + 1)])
    assert [ph[:3] for ph in p.phases] == [('train', True, True), ('valid', False, False)] * 2
    assert close([ph[3] for ph in p.phases], [0., .5, .5, 1.])

class GradProbe(Callback):
    "Keeps the inputs, targets, predictions and gradients of the regression parameters at `before_step`"
    def before_step(self):
        m = self.model
        self.got = [t.detach().clone() for t in (self.x, self.y, self.pred, m.a.grad, m.b.grad, m.a, m.b)]

# mirrors nbs/13a_learner.ipynb, "one_batch" and "all_batches" (event order, x/y/pred/loss, gradients)
def test_event_order_and_one_batch(with_callback):
    tracer, probe = Tracer(), GradProbe()
    learn = synth_learner(n_trn=5, cbs=[tracer, probe])
    assert tracer.events == ['after_create']
    tracer.events.clear()
    with quiet(learn): learn.fit(1)
    assert tracer.events == (['before_fit', 'before_epoch', 'before_train'] + TRAIN_BATCH*5 + ['after_train',
                             'before_validate'] + VALID_BATCH*2 + ['after_validate', 'after_epoch', 'after_fit'])
    x, y, pred, ga, gb, a, b = probe.got # last training step: the gradients of the MSE
    assert close(pred, x*a + b) and close(ga, (2*x*(pred - y)).mean()) and close(gb, 2*(pred - y).mean())
    # one batch outside a fit: evaluation only
    b_ = learn.dls.one_batch()
    tracer.events.clear()
    with learn.no_bar(): learn.one_batch(0, b_)
    assert tracer.events == VALID_BATCH
    assert torch.equal(learn.x, b_[0]) and torch.equal(learn.y, b_[1])
    out = learn.model(learn.x)
    assert torch.equal(learn.pred, out) and torch.equal(learn.loss, learn.loss_func(out, b_[1]))
    # one training batch outside a fit: the step moves the parameters
    learn.training = True
    before = [p.detach().clone() for p in learn.model.parameters()]
    tracer.events.clear()
    with learn.no_bar(): learn.one_batch(0, b_)
    assert tracer.events == TRAIN_BATCH
    assert not any(torch.equal(p0, p) for p0, p in zip(before, learn.model.parameters()))

# mirrors nbs/13a_learner.ipynb, "all_batches" / `learn(_before_epoch)` cells (events fired by hand, `with learn:`)
def test_events_fired_by_hand(with_callback):
    tracer = Tracer()
    learn = synth_learner(n_trn=5, cbs=tracer)
    with quiet(learn):
        tracer.events.clear()
        learn(['before_fit', 'before_epoch'])
        assert tracer.events == ['before_fit', 'before_epoch']
        learn.opt, learn.epoch = SGD(learn.model.parameters(), lr=learn.lr), 0
        tracer.events.clear()
        learn._do_epoch_train()
        assert tracer.events == ['before_train'] + TRAIN_BATCH*5 + ['after_train']
        assert learn.train_iter == 5
        tracer.events.clear()
        learn._do_epoch_validate()
        assert tracer.events == ['before_validate'] + VALID_BATCH*2 + ['after_validate']
        learn(['after_epoch', 'after_fit'])
        tracer.events.clear()
        with learn: pass
        assert tracer.events == ['before_fit', 'before_epoch', 'after_epoch', 'after_fit']

class Marker(Callback):
    "A callback that does nothing"

class Marker2(Callback):
    "Another callback that does nothing"
    def before_fit(self): pass

# mirrors nbs/13a_learner.ipynb, "Callback handling" (add/remove callbacks, ordered_cbs, show_training_loop)
def test_callback_handling(with_callback, capsys):
    extra = 1 if with_callback else 0 # allowed difference: the callback counts among learn.cbs
    n0 = len(defaults.callbacks) + extra
    learn = synth_learner()
    assert len(learn.cbs) == n0
    assert isinstance(learn.cbs[0], TrainEvalCallback) and learn.train_eval is learn.cbs[0]
    learn = synth_learner(cbs=Marker())
    assert len(learn.cbs) == n0 + 1
    assert isinstance(learn.cbs[len(defaults.callbacks)], Marker) and learn.marker.learn is learn
    learn.add_cb(Marker2())
    assert len(learn.cbs) == n0 + 2 and learn.marker2.learn is learn
    learn.add_cbs([Marker2(), Marker2()])
    assert len(learn.cbs) == n0 + 4
    learn.remove_cb(Marker2)
    assert len(learn.cbs) == n0 + 1 and not hasattr(learn, 'marker2')
    with learn.added_cbs(Marker2()):
        assert len(learn.cbs) == n0 + 2
    assert len(learn.cbs) == n0 + 1
    cb = learn.marker
    with learn.removed_cbs(cb):
        assert len(learn.cbs) == n0 and cb.learn is None
    assert len(learn.cbs) == n0 + 1 and cb.learn is learn
    learn.remove_cbs([cb])
    assert len(learn.cbs) == n0 and cb.learn is None and not hasattr(learn, 'marker')
    learn.add_cb(Marker2())
    names = [type(c).__name__ for c in learn.ordered_cbs('before_fit')]
    first = ['ReproducibleCallback'] if with_callback else [] # allowed difference: the callback acts at before_fit
    assert names == first + CBS_BEFORE_FIT[:1] + ['Marker2'] + CBS_BEFORE_FIT[1:]
    capsys.readouterr()
    learn.show_training_loop()
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.strip().startswith('- before_fit'))
    assert line.split(':', 1)[1].strip() == '[' + ', '.join(names) + ']'
    assert 'Start Fit' in out and 'End Batch Loop' in out

class ExtraParams(nn.Module):
    "The synthetic regression (`a`, `b`) beside an unused Linear and BatchNorm, to watch what the optimizer does"
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.randn(1)), nn.Parameter(torch.randn(1))
        self.extra = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(3))
        for m in self.extra: nn.init.normal_(m.bias)
    def forward(self, x): return x*self.a + self.b

class OnesGrad(Callback):
    "Gives every trainable parameter of `model.extra` a gradient of ones just before each step"
    def before_step(self):
        for p in self.model.extra.parameters():
            if p.requires_grad: p.grad = torch.ones_like(p)

def reg_learner(model, n_trn=5, **kwargs):
    "`synth_learner`'s learner with any `model` and `opt_func` (`synth_learner` fixes the optimizer)"
    return Learner(synth_dbunch(n_train=n_trn), model, loss_func=MSELossFlat(), **kwargs)

def extra_params(learn) -> list:
    "Copies of the Linear weight, Linear bias, BatchNorm weight and BatchNorm bias"
    return [p.detach().clone() for p in learn.model.extra.parameters()]

# mirrors nbs/13a_learner.ipynb, "Training loop" (no weight decay on norm and bias parameters; `_bn_bias_state`)
def test_no_weight_decay_on_norm_and_bias(with_callback):
    learn = reg_learner(ExtraParams(), opt_func=partial(SGD, wd=1, decouple_wd=True), cbs=OnesGrad())
    learn.create_opt()
    assert len(learn._bn_bias_state(True)) == 3 and all(s['do_wd'] is False for s in learn._bn_bias_state(True))
    assert len(learn._bn_bias_state(False)) == 2 and all(s['force_train'] for s in learn._bn_bias_state(False))
    init = extra_params(learn)
    with quiet(learn): learn.fit(1, lr=1e-2)
    end = extra_params(learn)
    assert not close(end[0] - init[0], torch.full_like(end[0], -0.05)) # decayed: five steps of wd=1
    for i in (1, 2, 3): assert close(end[i] - init[i], torch.full_like(end[i], -0.05)) # five steps of lr*grad

def split_extra(m):
    "Three parameter groups: the Linear, the BatchNorm, the regression parameters"
    return [list(m.extra[0].parameters()), list(m.extra[1].parameters()), [m.a, m.b]]

# mirrors nbs/13a_learner.ipynb, "Transfer learning" (freeze, freeze_to, unfreeze, train_bn)
def test_freeze_and_train_bn(with_callback):
    step = -0.05
    learn = reg_learner(ExtraParams(), opt_func=SGD, splitter=split_extra, lr=1e-2, cbs=OnesGrad())
    learn.freeze()
    init = extra_params(learn)
    with quiet(learn): learn.fit(1, wd=0.)
    end = extra_params(learn)
    for i in (0, 1): assert torch.equal(end[i], init[i])
    for i in (2, 3): assert close(end[i] - init[i], torch.full_like(end[i], step)) # BN trained: train_bn=True
    learn = reg_learner(ExtraParams(), opt_func=SGD, splitter=split_extra, lr=1e-2, cbs=OnesGrad(), train_bn=False)
    for freeze, trained in ((lambda l: l.freeze(), ()), (lambda l: l.freeze_to(-2), (2, 3)),
                            (lambda l: l.unfreeze(), (0, 1, 2, 3))):
        freeze(learn)
        init = extra_params(learn)
        with quiet(learn): learn.fit(1, wd=0.)
        end = extra_params(learn)
        for i in range(4):
            if i in trained: assert close(end[i] - init[i], torch.full_like(end[i], step), eps=1e-3)
            else: assert torch.equal(end[i], init[i])

# mirrors nbs/13a_learner.ipynb, "Serializing" (save and load, with and without the optimizer state)
def test_save_and_load(with_callback, tmp_path):
    learn = synth_learner(path=tmp_path)
    with quiet(learn): learn.fit(1)
    learn.save('tmp')
    assert (tmp_path/'models'/'tmp.pth').exists()
    learn1 = synth_learner(path=tmp_path).load('tmp')
    assert torch.equal(learn.model.a, learn1.model.a) and torch.equal(learn.model.b, learn1.model.b)
    assert equals(learn.opt.state_dict(), learn1.opt.state_dict())
    learn.save('tmp2', with_opt=False)
    learn2 = synth_learner(path=tmp_path).load('tmp2', with_opt=False)
    assert torch.equal(learn.model.a, learn2.model.a) and torch.equal(learn.model.b, learn2.model.b)
    assert not equals(learn.opt.state_dict(), learn2.opt.state_dict())

class SmoothLossProbe(Callback):
    "Right after `Recorder`: keeps each training loss and what the recorder logged for it"
    order = 51
    def before_fit(self): self.rows = []
    def after_batch(self):
        if self.training:
            r = self.recorder
            self.rows.append((self.loss.item(), float(r.losses[-1]), float(self.smooth_loss), r.lrs[-1],
                              self.opt.hypers[-1]['lr'], len(r.losses), len(r.lrs)))

# mirrors nbs/13a_learner.ipynb, "Recorder" (metric names, smooth loss, lrs, values, printed output, no_logging)
def test_recorder(with_callback, capsys):
    learn = synth_learner(n_trn=5, metrics=mse_metric, cbs=SmoothLossProbe())
    with learn.no_bar(): learn.fit(2)
    printed = capsys.readouterr().out
    assert re.search(r"\[0, \d+\.\d+, \d+\.\d+, \d+\.\d+, '\d\d:\d\d'\]", printed), printed
    assert re.search(r"\[1, \d+\.\d+, \d+\.\d+, \d+\.\d+, '\d\d:\d\d'\]", printed), printed
    r, rows = learn.recorder, learn.smooth_loss_probe.rows
    assert r.metric_names == ['epoch', 'train_loss', 'valid_loss', 'mse_metric', 'time']
    assert [row[5:] for row in rows] == [(i, i) for i in range(1, 11)] # one lr and one loss per training batch
    val, beta = 0., 0.98
    for k, (loss, logged, smooth, lr, hyper_lr, _, _) in enumerate(rows, 1): # exponentially weighted, debiased
        val = beta*val + (1 - beta)*loss
        assert math.isclose(logged, val/(1 - beta**k), rel_tol=1e-4) and logged == smooth and lr == hyper_lr
    assert len(r.values) == 2 and all(len(v) == 3 for v in r.values)
    assert math.isclose(r.values[-1][1], r.values[-1][2], rel_tol=1e-5) # valid loss is the MSE metric
    with learn.no_bar():
        learn.recorder.train_metrics = True
        learn.fit(1)
        assert r.metric_names == ['epoch', 'train_loss', 'train_mse_metric', 'valid_loss', 'valid_mse_metric', 'time']
        learn.recorder.train_metrics, learn.recorder.add_time = False, False
        learn.fit(1)
        assert r.metric_names == ['epoch', 'train_loss', 'valid_loss', 'mse_metric']
        capsys.readouterr()
        with learn.no_logging(): learn.fit(1)
        assert capsys.readouterr().out == '' and learn.logger is print
    learn = synth_learner(n_trn=5, metrics=lambda o, t: F.mse_loss(o, t).numpy()) # a metric giving NumPy values
    with quiet(learn): learn.fit(1)
    assert len(learn.recorder.values[-1]) == 3

# mirrors nbs/13a_learner.ipynb, "Inference functions: validate"
def test_validate(with_callback):
    learn = synth_learner(n_trn=5, metrics=mse_metric)
    res = learn.validate()
    assert len(res) == 2 and math.isclose(res[0], res[1], rel_tol=1e-6)
    x, y = learn.dls.valid_ds.tensors
    assert math.isclose(res[0], F.mse_loss(learn.model(x), y).item(), rel_tol=1e-3)
    res = learn.validate(dl=learn.dls.train)
    x, y = learn.dls.train_ds.tensors
    assert math.isclose(res[0], F.mse_loss(learn.model(x), y).item(), rel_tol=1e-3)

# mirrors nbs/13a_learner.ipynb, "get_preds" (act, ds_idx, drop_last, other loaders, with_loss, with_input, no target,
# with_decoded, automatic activation, reorder)
def test_get_preds(with_callback):
    learn = synth_learner(n_trn=5, metrics=mse_metric)
    x, y = learn.dls.valid_ds.tensors
    with torch.no_grad(): out = learn.model(x)
    preds, targs = learn.get_preds()
    assert torch.equal(targs, y) and close(preds, out)
    preds, targs = learn.get_preds(act=torch.sigmoid)
    assert torch.equal(targs, y) and close(preds, torch.sigmoid(out))
    preds, targs = learn.get_preds(ds_idx=0) # the shuffled training loader: back in the data set's order
    assert torch.equal(targs, learn.dls.train_ds.tensors[1])
    x2 = torch.randn(70, 1)
    y2 = 2*x2 + 3 + 0.1*torch.randn(70, 1)
    with torch.no_grad(): out2 = learn.model(x2)
    dl = TfmdDL(TensorDataset(x2, y2), bs=16, shuffle=True, drop_last=True)
    preds, targs = learn.get_preds(dl=dl) # drop_last turned off, order restored
    assert torch.equal(targs, y2) and close(preds, out2)
    preds, targs, losses = learn.get_preds(dl=dl, with_loss=True)
    assert close(losses, F.mse_loss(preds, targs, reduction='none').view(-1))
    inps, preds, targs = learn.get_preds(dl=dl, with_input=True)
    assert torch.equal(inps, x2) and torch.equal(targs, y2)
    assert len(learn.get_preds(dl=dl, with_decoded=True)) == 3
    preds, targs = learn.get_preds(dl=TfmdDL(TensorDataset(x2), bs=16))
    assert targs is None and close(preds, out2)
    learn.loss_func = BCEWithLogitsLossFlat()
    preds, _ = learn.get_preds(dl=dl)
    assert close(preds, torch.sigmoid(out2))

class PlusOneLoss(nn.Module):
    "An MSE loss whose activation adds 1 and whose decodes doubles"
    reduction = 'none'
    def forward(self, x, y): return F.mse_loss(x, y)
    def activation(self, x): return x + 1
    def decodes(self, x): return 2*x

class AddOne(Transform):
    "Adds 1 to a target, takes it off to decode"
    def encodes(self, x): return x + 1
    def decodes(self, x): return x - 1

# mirrors nbs/13a_learner.ipynb, "predict" (loss activation and decodes, transforms' decodes, with_input), with the
# SAME loader as training and validation set: `DataLoaders(dl, dl)`
def test_predict(with_callback):
    learn = synth_learner(n_trn=5)
    dl = TfmdDL(Datasets(torch.arange(50), tfms=[L(), [AddOne()]]))
    learn.dls = DataLoaders(dl, dl)
    learn.loss_func = PlusOneLoss()
    inp = torch.tensor([2.])
    out = learn.model(inp).detach() + 1
    dec = 2*out
    full = dec - 1
    assert equals(list(learn.predict(inp)), [full, dec, out])
    assert equals(list(learn.predict(inp, with_input=True)), [inp, full, dec, out])

# mirrors nbs/13a_learner.ipynb, "TTA" (on synthetic data, the SAME loader as training and validation set)
def test_tta_synth(with_callback):
    learn = synth_learner()
    dl = TfmdDL(Datasets(torch.arange(50), [noop, noop]))
    learn.dls = DataLoaders(dl, dl)
    with learn.no_bar(): preds, targs = learn.tta()
    assert len(preds) == len(targs) == 50 and torch.equal(targs, torch.arange(50))
    with torch.no_grad(): assert close(preds, learn.model(torch.arange(50)))

# mirrors nbs/13a_learner.ipynb, "TTA" (with the augmentation of the training set, on the digits images)
def test_tta_vision(with_callback, vision_dls):
    learn = vision_learner_on(vision_dls())
    with quiet(learn): learn.fit(1)
    n = len(learn.dls.valid_ds)
    with learn.no_bar(): (aug, plain), _ = learn.tta(n=2, beta=None)
    preds, targs = learn.get_preds()
    assert aug.shape == plain.shape == (n, 2) and close(aug.sum(1), torch.ones(n))
    assert close(plain, preds) and not close(aug, plain) # augmented passes see other images
    with learn.no_bar(): mixed, targs2 = learn.tta(n=2)
    assert torch.equal(targs2, targs) and mixed.shape == (n, 2)

# mirrors nbs/13a_learner.ipynb, "show_results" (headless, on the digits images)
def test_show_results(with_callback, vision_dls):
    learn = vision_learner_on(vision_dls())
    with learn.no_bar(): learn.show_results(max_n=4)
    axes = plt.gcf().axes
    assert len(axes) == 4
    assert all(re.fullmatch(r'(True|False)\n(True|False)', ax.get_title()) for ax in axes)

# mirrors nbs/13a_learner.ipynb, "DataLoader": a `DataLoaders(dl, dl)` with the SAME loader for training and validation
def test_same_loader_for_training_and_validation(with_callback):
    x = torch.randn(160, 1)
    dl = TfmdDL(TensorDataset(x, 2*x + 3 + 0.1*torch.randn(160, 1)), bs=16, shuffle=True)
    learn = synth_learner(data=DataLoaders(dl, dl), lr=1e-2)
    with quiet(learn): learn.fit(3)
    assert learn.dls.train is learn.dls.valid is dl
    assert learn.recorder.values[-1][1] < learn.recorder.values[0][1] / 2
    preds, targs = learn.get_preds()
    assert torch.equal(targs, dl.dataset.tensors[1])

# ------------------------------------------------------------------------------------------------------------------
# nbs/14_callback.schedule.ipynb

# mirrors nbs/14_callback.schedule.ipynb, "ParamScheduler" (a linear schedule; discriminative learning rates)
def test_param_scheduler(with_callback):
    learn = synth_learner()
    with quiet(learn): learn.fit(1, cbs=ParamScheduler({'lr': SchedLin(1e-3, 1e-2)}))
    n = len(learn.dls.train)
    assert close(learn.recorder.hps['lr'], [1e-3 + (1e-2 - 1e-3)*i/n for i in range(n)])
    learn = synth_learner(splitter=lambda m: [[m.a], [m.b]])
    sched = {'lr': combined_cos(0.5, np.array([1e-4, 1e-3]), np.array([1e-3, 1e-2]), np.array([1e-5, 1e-4]))}
    with quiet(learn): learn.fit(1, cbs=ParamScheduler(sched))
    lrs = [h['lr'] for h in learn.opt.hypers]
    assert math.isclose(lrs[1], 10*lrs[0], rel_tol=1e-6) and lrs[1] < 1e-2

# mirrors nbs/14_callback.schedule.ipynb, "fit_one_cycle" (the model gets better; the lr and momentum schedules)
def test_fit_one_cycle(with_callback):
    learn = synth_learner(lr=1e-2)
    xb, yb = next(iter(learn.dls.valid))
    init_loss = learn.loss_func(learn.model(xb), yb).item()
    with quiet(learn): learn.fit_one_cycle(2)
    assert learn.loss_func(learn.model(xb), yb).item() < init_loss
    n = 2*len(learn.dls.train)
    assert close(learn.recorder.hps['lr'], [combined_cos(0.25, 1e-2/25, 1e-2, 1e-7)(i/n) for i in range(n)])
    assert close(learn.recorder.hps['mom'], [combined_cos(0.25, 0.95, 0.85, 0.95)(i/n) for i in range(n)])

# mirrors nbs/14_callback.schedule.ipynb, "fit_flat_cos"
def test_fit_flat_cos(with_callback):
    learn = synth_learner()
    with quiet(learn): learn.fit_flat_cos(2)
    lrs, n = learn.recorder.hps['lr'], 2*len(learn.dls.train)
    assert len(lrs) == n and close(lrs[:int(0.75*n)], [learn.lr]*int(0.75*n))
    assert all(a >= b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < learn.lr/10

# mirrors nbs/14_callback.schedule.ipynb, "fit_sgdr" (cycles of 1, 2, 4 epochs, each a cosine from lr to 0)
def test_fit_sgdr(with_callback):
    learn = synth_learner()
    with quiet(learn): learn.fit_sgdr(3, 1)
    assert learn.n_epoch == 7
    iters = [k*len(learn.dls.train) for k in (0, 1, 3, 7)]
    for s, e in zip(iters, iters[1:]):
        n = e - s # the first lr of a cycle can round with the last of the previous one: check from the second
        assert close(learn.recorder.lrs[s + 1:e], [SchedCos(learn.lr, 0)(k/n) for k in range(1, n)])

# mirrors nbs/14_callback.schedule.ipynb, "fine_tune" (a frozen fit, then an unfrozen one with base_lr/2)
def test_fine_tune(with_callback):
    tracer = Tracer()
    learn = synth_learner(cbs=tracer)
    with quiet(learn): learn.fine_tune(1)
    assert tracer.events.count('before_fit') == tracer.events.count('after_fit') == 2
    lrs = learn.recorder.hps['lr']
    assert len(lrs) == len(learn.dls.train) and 0.9e-3 < max(lrs) <= 1e-3 + 1e-12
    assert len(learn.recorder.values) == 1

# mirrors nbs/14_callback.schedule.ipynb, "LRFinder" and "lr_find" (schedule, stop on divergence, no validation,
# weights and optimizer state put back)
def test_lr_find(with_callback, tmp_path):
    learn = synth_learner(path=tmp_path)
    a, b = learn.model.a.detach().clone(), learn.model.b.detach().clone()
    with quiet(learn): learn.fit(20, cbs=LRFinder(num_it=100))
    r = learn.recorder
    assert 0 < len(r.lrs) <= 100 and len(r.lrs) == len(r.losses)
    if len(r.lrs) < 100: assert r.losses[-1] > 4*min(r.losses)
    assert close(r.lrs, [SchedExp(1e-7, 10)(i/100) for i in range(len(r.lrs))])
    assert all(len(v) == 1 for v in r.values) # no validation
    assert torch.equal(learn.model.a, a) and torch.equal(learn.model.b, b)
    assert learn.opt.state_dict()['state'] == [{}, {}]
    with quiet(learn): sugg = learn.lr_find(show_plot=False)
    assert 1e-7 <= sugg.valley <= 10
    assert torch.equal(learn.model.a, a) and torch.equal(learn.model.b, b)
    assert not list((tmp_path/'models').glob('**/*.pth')) # its temporary files are gone

# ------------------------------------------------------------------------------------------------------------------
# nbs/15_callback.hook.ipynb

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

# ------------------------------------------------------------------------------------------------------------------
# nbs/16_callback.progress.ipynb

# mirrors nbs/16_callback.progress.ipynb, "ProgressCallback" and "no_bar" (also validate without any training)
def test_progress_and_no_bar(with_callback, capsys):
    learn = synth_learner()
    assert hasattr(learn, 'progress')
    learn.fit(2)
    assert len(learn.recorder.values) == 2 and hasattr(learn, 'progress')
    capsys.readouterr()
    with learn.no_bar():
        assert not hasattr(learn, 'progress')
        learn.fit(2)
    assert hasattr(learn, 'progress')
    out = capsys.readouterr().out
    assert re.search(r"^\[0, [\d.]+, [\d.]+, '\d\d:\d\d'\]$", out, re.M) and re.search(r"^\[1, ", out, re.M), out
    learn = synth_learner(n_trn=5, metrics=mse_metric)
    res = learn.validate()
    assert len(res) == 2 and math.isclose(res[0], res[1], rel_tol=1e-6)

# mirrors nbs/16_callback.progress.ipynb, "ShowGraphCallback" (headless)
def test_show_graph_callback(with_callback):
    learn = synth_learner(cbs=ShowGraphCallback())
    learn.fit(3)
    n = len(learn.dls.train)
    assert learn.show_graph.nb_batches == [n, 2*n, 3*n] and len(learn.recorder.values) == 3
    learn.lr_find(num_it=10, show_plot=False) # not run in an lr_find
    assert learn.show_graph.nb_batches == [n, 2*n, 3*n]

# mirrors nbs/16_callback.progress.ipynb, "CSVLogger"
def test_csv_logger(with_callback, tmp_path):
    learn = synth_learner(path=tmp_path, cbs=CSVLogger())
    with quiet(learn): learn.fit(3)
    df = learn.csv_logger.read_log()
    assert list(df.columns) == list(learn.recorder.metric_names)
    for i, v in enumerate(learn.recorder.values): assert close(df.iloc[i, :3].tolist(), [i] + list(v), 1e-4)
    learn.get_preds() # inference writes nothing
    assert len(learn.csv_logger.read_log()) == 3

# ------------------------------------------------------------------------------------------------------------------
# nbs/17_callback.tracker.ipynb

# mirrors nbs/17_callback.tracker.ipynb, "TerminateOnNaNCallback"
def test_terminate_on_nan(with_callback):
    learn = synth_learner()
    with quiet(learn): learn.fit(10, lr=100, cbs=TerminateOnNaNCallback())
    assert len(learn.recorder.losses) < 10*len(learn.dls.train) and len(learn.recorder.values) < 10
    assert all(torch.isfinite(torch.as_tensor(l)) for l in learn.recorder.losses)

class ForceValues(Callback):
    "Right after `Recorder`: overwrites the logged value of `monitor` with `values[epoch]`"
    order = 51
    def __init__(self, monitor, values): self.monitor, self.values = monitor, values
    def before_fit(self): self.idx = list(self.recorder.metric_names[1:]).index(self.monitor)
    def after_epoch(self): self.recorder.values[-1][self.idx] = self.values[self.epoch]

class BestLog(Callback):
    "After the tracker: keeps its best value and whether each epoch was a new best"
    order = 61
    def before_fit(self): self.bests, self.news = [], []
    def after_epoch(self):
        self.bests.append(self.tracker.best)
        self.news.append(self.tracker.new_best)

# mirrors nbs/17_callback.tracker.ipynb, "TrackerCallback" (best and new_best, min_delta, comp for metrics,
# reset_on_fit, not run in lr_find)
def test_tracker_callback(with_callback):
    learn = synth_learner(n_trn=2, cbs=BestLog(), metrics=mse_metric)
    for monitor, kw, bests, news in (('valid_loss', {}, [0.2, 0.1], [True, True]),
                                     ('valid_loss', dict(min_delta=0.15), [0.2, 0.2], [True, False]),
                                     ('mse_metric', {}, [0.2, 0.2], [True, False]), # metrics: bigger is better
                                     ('mse_metric', dict(comp=np.less), [0.2, 0.1], [True, True])):
        with quiet(learn): learn.fit(2, cbs=[TrackerCallback(monitor=monitor, **kw), ForceValues(monitor, [0.2, 0.1])])
        assert learn.best_log.bests == bests and learn.best_log.news == news
    learn = synth_learner(n_val=2, cbs=TrackerCallback(monitor='mse_metric', reset_on_fit=False), metrics=mse_metric)
    with quiet(learn): learn.fit(1)
    first_best = learn.tracker.best
    with quiet(learn): learn.fit(1)
    assert learn.tracker.best == first_best
    learn = synth_learner(n_trn=2, cbs=TrackerCallback(monitor='mse_metric'), metrics=mse_metric)
    with quiet(learn): learn.lr_find(num_it=15, show_plot=False)
    assert not hasattr(learn.tracker, 'new_best')

# mirrors nbs/17_callback.tracker.ipynb, "EarlyStoppingCallback"
@pytest.mark.parametrize('monitor', ['mse_loss', 'valid_loss'])
def test_early_stopping(with_callback, monitor, capsys):
    learn = synth_learner(n_trn=2, metrics=F.mse_loss)
    with learn.no_bar():
        learn.fit(n_epoch=200, lr=1e-7, cbs=EarlyStoppingCallback(monitor=monitor, min_delta=0.1, patience=2))
    assert len(learn.recorder.values) == 3
    assert 'No improvement since epoch 0: early stopping' in capsys.readouterr().out
    assert len(learn.validate()) == 2

# mirrors nbs/17_callback.tracker.ipynb, "SaveModelCallback" (best model, at_end, every_epoch as True and as 2)
def test_save_model_callback(with_callback, tmp_path):
    learn = synth_learner(n_trn=2, path=tmp_path)
    with quiet(learn): learn.fit(n_epoch=2, cbs=SaveModelCallback())
    assert (tmp_path/'models'/'model.pth').exists()
    saved = torch.load(tmp_path/'models'/'model.pth', weights_only=True)
    assert torch.equal(saved['a'], learn.model.a) and torch.equal(saved['b'], learn.model.b) # the best, loaded back
    with quiet(learn): learn.fit(n_epoch=2, cbs=SaveModelCallback(fname='end', at_end=True))
    assert (tmp_path/'models'/'end.pth').exists()
    with quiet(learn): learn.fit(n_epoch=2, cbs=SaveModelCallback(every_epoch=True))
    assert all((tmp_path/'models'/f'model_{i}.pth').exists() for i in range(2))
    learn.path = tmp_path/'every2'
    with quiet(learn): learn.fit(n_epoch=4, cbs=SaveModelCallback(every_epoch=2))
    assert [(learn.path/'models'/f'model_{i}.pth').exists() for i in range(4)] == [True, False, True, False]

# mirrors nbs/17_callback.tracker.ipynb, "ReduceLROnPlateau" (with and without min_lr)
def test_reduce_lr_on_plateau(with_callback, capsys):
    learn = synth_learner(n_trn=2)
    with learn.no_bar(): learn.fit(n_epoch=4, lr=1e-7, cbs=ReduceLROnPlateau(monitor='valid_loss', min_delta=0.1,
                                                                                patience=2))
    assert math.isclose(learn.opt.hypers[-1]['lr'], 1e-8)
    assert 'Epoch 2: reducing lr to 1e-08' in capsys.readouterr().out
    learn = synth_learner(n_trn=2)
    with quiet(learn): learn.fit(n_epoch=6, lr=5e-8, cbs=ReduceLROnPlateau(monitor='valid_loss', min_delta=0.1,
                                                                            patience=2, min_lr=1e-8))
    assert math.isclose(learn.opt.hypers[-1]['lr'], 1e-8)

# ------------------------------------------------------------------------------------------------------------------
# nbs/18a_callback.training.ipynb

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

# ------------------------------------------------------------------------------------------------------------------
# The callback is invisible outside training fits

def repro_synth():
    "A learner on `line_dls` whose data and model are built after `ReproducibleCallback(21)` seeded"
    cb = ReproducibleCallback(21, compare_previous=False)
    return Learner(line_dls(), RegModel(), loss_func=MSELossFlat(), opt_func=partial(SGD, mom=0.9), lr=1e-2, cbs=cb)

def repro_vision(vision_dls):
    "A `tiny_cnn` learner on the digits whose model is built after `ReproducibleCallback(21)` seeded"
    dls = vision_dls()
    cb = ReproducibleCallback(21, compare_previous=False)
    return vision_learner_on(dls, cbs=cb)

def with_learn(learn):
    "Enter and leave the learner as a context manager, as `layer_info` does"
    with learn: pass

def show(learn):
    "Show four results, close the figure"
    learn.show_results(max_n=4)
    plt.close('all')

ENTRIES = { # name: (data, call)
    'get_preds': ('synth', lambda l: l.get_preds()),
    'get_preds_options': ('synth', lambda l: l.get_preds(ds_idx=0, with_input=True, with_loss=True,
                                                          with_decoded=True, act=torch.sigmoid)),
    'predict': ('synth', lambda l: l.predict(np.array([0.5], dtype=np.float32))),
    'validate': ('synth', lambda l: l.validate()),
    'tta': ('synth', lambda l: l.tta(n=2)),
    'summary': ('synth', lambda l: l.summary()),
    'with_learn': ('synth', with_learn),
    'events_by_hand': ('synth', lambda l: l(['before_fit', 'before_epoch'])),
    'lr_find': ('synth', lambda l: l.lr_find(num_it=20, show_plot=False)),
    'tta_vision': ('vision', lambda l: l.tta(n=2)),
    'show_results': ('vision', show),
}

def build(kind, request):
    "A learner for an entry of ENTRIES, built with the callback"
    return repro_synth() if kind == 'synth' else repro_vision(request.getfixturevalue('vision_dls'))

def state(learn) -> dict:
    "Every generator the callback seeds, its fit counter and the determinism flags"
    return dict(rng=get_rng_state(learn.dls), n_fit=learn.reproducible.n_fit, flags=determinism_flags())

def changes(a:dict, b:dict) -> list:
    "The parts of two `state` snapshots that differ, by name"
    ra, rb = a['rng'], b['rng']
    out = []
    if ra['random'] != rb['random']: out.append('python random')
    if not all(np.array_equal(x, y) for x, y in zip(ra['numpy'], rb['numpy'])): out.append('numpy')
    if not torch.equal(ra['torch'], rb['torch']): out.append('torch')
    if ('cuda' in ra or 'cuda' in rb) and not equals(ra.get('cuda'), rb.get('cuda')): out.append('cuda')
    if len(ra['loaders']) != len(rb['loaders']): out.append('number of loaders')
    out += [f'loader {i} rng' for i, (x, y) in enumerate(zip(ra['loaders'], rb['loaders'])) if x != y]
    if a['n_fit'] != b['n_fit']: out.append(f"n_fit {a['n_fit']} -> {b['n_fit']}")
    out += [f'flag {k}' for k in a['flags'] if a['flags'][k] != b['flags'][k]]
    return out

def test_state_probe_sees_every_change():
    "The comparison used below can fail: a draw from each generator, a fit counter and a flag are all seen"
    learn = repro_synth()
    before = state(learn)
    assert changes(before, state(learn)) == []
    import random
    random.random(); np.random.rand(); torch.rand(1); learn.dls.train.rng.random(); learn.reproducible.n_fit += 1
    torch.backends.cudnn.benchmark = not torch.backends.cudnn.benchmark
    assert changes(before, state(learn)) == ['python random', 'numpy', 'torch', 'loader 0 rng', 'n_fit 0 -> 1',
                                             'flag cudnn.benchmark']

@pytest.mark.parametrize('entry', list(ENTRIES))
def test_invisible_outside_fits(entry, request):
    "After a training fit, the entry point leaves every generator, the fit counter and the flags as they were"
    kind, call = ENTRIES[entry]
    learn = build(kind, request)
    with quiet(learn):
        learn.fit(1)
        before = state(learn)
        call(learn)
        after = state(learn)
    diff = changes(before, after)
    assert not diff, f'{entry} changed: {diff}'

def weights(learn) -> dict:
    "A copy of the model's `state_dict`"
    return {k: v.detach().clone() for k, v in learn.model.state_dict().items()}

def fit_x_fit(learn, between=None) -> dict:
    "fit; `between`; fit, and the final weights"
    with quiet(learn):
        learn.fit(1)
        if between is not None: between(learn)
        learn.fit(1)
    return weights(learn)

def bit_identical(a:dict, b:dict) -> bool:
    "Same keys, every tensor `torch.equal`"
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

def test_fit_x_fit_sees_a_skipped_fit():
    "The comparison used below can fail: a second fit run as fit 2 instead of fit 1 ends elsewhere"
    def skip(l):
        "Count one more training fit than there was"
        l.reproducible.n_fit += 1
    assert not bit_identical(fit_x_fit(repro_synth(), skip), fit_x_fit(repro_synth()))

@pytest.mark.parametrize('entry', list(ENTRIES))
def test_fit_x_fit_equals_fit_fit(entry, request):
    "The entry point between two training fits changes nothing in the second one"
    kind, call = ENTRIES[entry]
    ref = fit_x_fit(build(kind, request))
    got = fit_x_fit(build(kind, request), call)
    assert bit_identical(got, ref)
