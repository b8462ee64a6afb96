"Shared pieces of the end-to-end tests: a small real data set and one training run of the pets notebook"
import os, random, warnings
import numpy as np, torch
import fastai.callback.schedule  # noqa: F401  (fine_tune, lr_find)
from fastai.callback.core import Callback
from fastai.learner import Recorder
from fastai.metrics import error_rate
from fastai.vision.learner import cnn_learner
from fastai.vision.models import resnet18
from fastai_repro.all import ReproducibleCallback, weights_equal
from fastai_repro.callback import fit_kind

N_IMAGES, SIZE, LR_FIND_ITERS = 640, 32, 24

class Trace(Callback):
    "Keeps every training loss and every epoch's metrics row, to compare runs exactly"
    order = Recorder.order + 1
    def before_fit(self):
        if not hasattr(self, 'losses'): self.losses, self.rows, self.n_batches = [], [], 0
        self.on = fit_kind(self.learn) == 'train' # not lr_find, validate or get_preds
    def after_batch(self):
        if self.on: self.n_batches += 1
        if self.on and self.training: self.losses.append(self.learn.loss.detach().clone())
    def after_epoch(self):
        if self.on: self.rows.append(list(self.recorder.values[-1]))

def scramble():
    "Fresh OS entropy in Python's, NumPy's and torch's global generators: what an unseeded process would hold"
    seed = int.from_bytes(os.urandom(4), 'little')
    random.seed(seed); np.random.seed(seed); torch.manual_seed(seed)

def repro_cbs(callback=True, seed=21, compare_previous=False) -> list:
    "`ReproducibleCallback(seed)` (or not) and a `Trace`"
    return ([ReproducibleCallback(seed, compare_previous=compare_previous)] if callback else []) + [Trace()]

def make_learner(dls, callback=True, seed=21, compare_previous=False, cbs=(), **kwargs):
    "`cnn_learner(dls, resnet18, pretrained=False)` as in the pets notebook, with the callback or without; `cbs` added"
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn = cnn_learner(dls, resnet18, pretrained=False, metrics=error_rate,
                            cbs=repro_cbs(callback, seed, compare_previous) + list(cbs), **kwargs)
    learn.path = dls.path
    return learn

def train(dls, callback=True, lr_find=False, seed=21):
    "One run of the pets notebook: optionally `lr_find`, then `fine_tune(1)`"
    learn = make_learner(dls, callback, seed)
    with learn.no_bar(), learn.no_logging():
        if lr_find: learn.suggestion = learn.lr_find(show_plot=False, num_it=LR_FIND_ITERS)
        learn.fine_tune(1)
    return learn

def same_run(a, b) -> bool:
    "Bit-identical final weights, training losses and epoch metrics"
    ta, tb = a.trace, b.trace
    return (weights_equal(a.model, b.model) and len(ta.losses) == len(tb.losses)
            and all(torch.equal(x, y) for x, y in zip(ta.losses, tb.losses)) and ta.rows == tb.rows)

def assert_same(a, b):
    "Every `state_dict` tensor bit-identical (`torch.equal`), and the recorded losses and metrics too"
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa: assert torch.equal(sa[k], sb[k]), f'{k} differs'
    assert same_run(a, b)
