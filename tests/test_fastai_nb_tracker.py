"""fastai's nbs/17_callback.tracker.ipynb scenarios, on plain fastai and with `ReproducibleCallback(21)` in every
`Learner` (the `with_callback` fixture, conftest.py)."""
import math
import numpy as np, pytest, torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from fastai.callback.tracker import (EarlyStoppingCallback, ReduceLROnPlateau, SaveModelCallback,
                                     TerminateOnNaNCallback, TrackerCallback)
from fastai.test_utils import synth_learner
from helpers import mse_metric, quiet

pytestmark = pytest.mark.usefixtures('restore_globals') # in these files only: flags and figures put back after each

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
