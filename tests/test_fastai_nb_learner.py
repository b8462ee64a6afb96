"""fastai's nbs/13a_learner.ipynb scenarios, on plain fastai and with `ReproducibleCallback(21)` in every `Learner`
(the `with_callback` fixture, conftest.py). The only assertions that differ between the two runs are those of
`test_callback_handling`: `len(learn.cbs)` counts one more callback, and `learn.ordered_cbs('before_fit')` and
`learn.show_training_loop()` list `ReproducibleCallback` first for `before_fit`."""
import math, re
from functools import partial
import matplotlib.pyplot as plt
import pytest, torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader as TorchDL, TensorDataset
from fastcore.foundation import L
from fastcore.test import equals
from fastai.callback.core import Callback, TrainEvalCallback
from fastai.data.all import DataLoaders, Datasets, TfmdDL, Transform, noop
from fastai.learner import Learner, defaults
from fastai.losses import BCEWithLogitsLossFlat, MSELossFlat
from fastai.optimizer import SGD
from fastai.test_utils import synth_dbunch, synth_learner
from helpers import Tracer, close, mse_metric, quiet, vision_learner_on

pytestmark = pytest.mark.usefixtures('restore_globals') # in these files only: flags and figures put back after each

TRAIN_BATCH = ['before_batch', 'after_pred', 'after_loss', 'before_backward', 'after_backward', 'before_step',
               'after_step', 'after_batch'] # fastai 2.8 sends after_backward too
VALID_BATCH = ['before_batch', 'after_pred', 'after_loss', 'after_batch']
CBS_BEFORE_FIT = ['TrainEvalCallback', 'Recorder', 'ProgressCallback'] # fastai's defaults that act at `before_fit`

def torch_dbunch(bs=16, n_train=10, n_valid=2):
    "`synth_dbunch`'s regression data in plain PyTorch `DataLoader`s"
    def ds(n):
        "A y = 2x + 3 data set of `bs*n` points with a little noise"
        x = torch.randn(bs*n, 1)
        return TensorDataset(x, 2*x + 3 + 0.1*torch.randn(bs*n, 1))
    return DataLoaders(TorchDL(ds(n_train), batch_size=bs, shuffle=True), TorchDL(ds(n_valid), batch_size=bs))

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
