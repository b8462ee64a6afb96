"""Issue 28, item 1: `ReproducibleCallback(on_anomaly=...)` watches each training batch for a non-finite or spiking
loss or gradient norm, records it, and warns, stops the fit or skips the step. A small regression on synthetic data,
with one poisoned item (a NaN input) or a learning rate raised in the middle of a fit."""
import warnings
import pytest, torch
from torch import nn
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders, TfmdDL
from fastai.learner import Learner
from fastai.losses import MSELossFlat
from fastai_repro.all import ReproducibleCallback, ReproducibilityWarning, compare
from fastai_repro.checkpoint import checkpoints
from helpers import assert_same_tensors

N, BS, POISON = 160, 8, 37 # 20 training batches an epoch; item 37 has a NaN input

def learner(on_anomaly=None, poison=True, bump=None, cbs=(), **kw) -> Learner:
    "A linear regression on `N` items (item `POISON` with a NaN input if `poison`), the lr raised at batch `bump`"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 4, generator=g)
    y = x @ torch.tensor([1., -2., 3., 0.5]) + 0.1 * torch.randn(N, generator=g)
    if poison: x[POISON, 1] = float('nan')
    items = [(x[i], y[i:i + 1]) for i in range(N)]
    dls = DataLoaders(TfmdDL(items, bs=BS, shuffle=True, drop_last=True), TfmdDL(items[:16], bs=BS))
    cb = ReproducibleCallback(21, compare_previous=False, on_anomaly=on_anomaly, **kw)
    learn = Learner(dls, nn.Linear(4, 1), loss_func=MSELossFlat(), lr=0.05, cbs=[cb, *cbs])
    if bump is not None: learn.add_cb(Bump(bump))
    return learn

class Bump(Callback):
    "Sets the learning rate to 40 from training batch `at` (epoch, batch) on: a loss that spikes, no item to blame"
    def __init__(self, at): self.at = at
    def before_batch(self):
        if self.training and (self.epoch, self.iter) >= self.at: self.opt.set_hyper('lr', 40.)

class Poisoned(Callback):
    "Notes the training batches (epoch, batch) whose inputs hold a NaN"
    def before_fit(self): self.seen = []
    def before_batch(self):
        if self.training and self.xb[0].isnan().any(): self.seen.append((self.epoch, self.iter))

def fit(learn, n_epoch=2) -> list:
    "Fit quietly; the `ReproducibleCallback` warnings it raised"
    with warnings.catch_warnings(record=True) as w, learn.no_bar(), learn.no_logging():
        warnings.simplefilter('always')
        learn.fit(n_epoch)
    return [str(x.message) for x in w if issubclass(x.category, ReproducibilityWarning)]

def anomalies(learn) -> list: return [e for e in learn.reproducible.record.events if e['event'] == 'anomaly']

def where(e) -> tuple: return e['epoch'], e['iter']

def test_warn_finds_the_poisoned_batch():
    learn = learner('warn', cbs=[seen := Poisoned()])
    said = fit(learn)
    ev = anomalies(learn)
    assert where(ev[0]) == seen.seen[0] and ev[0]['found'][0]['what'] == 'loss' # the batch that holds item 37
    assert ev[0]['found'][0]['kind'] == 'non-finite' and ev[0]['action'] == 'warn'
    assert not torch.isfinite(learn.model.weight).all() # it went on: the NaN reached the weights, every batch after
    assert len(ev) == 40 - (seen.seen[0][0] * 20 + seen.seen[0][1]) # every batch from there is anomalous
    assert len(said) == 2 and 'anomaly at fit 0, epoch' in said[0] and 'the loss is not finite (nan)' in said[0]
    assert said[1].startswith(f'ReproducibleCallback: {len(ev)} anomalous training batches in fit 0'), said
    plain = learner(None); assert fit(plain) == [] and anomalies(plain) == [] # unwatched: nothing said

def test_stop_ends_the_fit_there():
    learn = learner('stop', cbs=[seen := Poisoned()])
    fit(learn)
    end = learn.reproducible.record.fits[0]['end']
    assert (end['status'], end['epoch'], end['iter']) == ('cancelled', *seen.seen[0]), end
    assert end['reason'].startswith('anomaly: the loss is not finite (nan)'), end
    assert torch.isfinite(learn.model.weight).all() # stopped before the step

def test_skip_skips_the_step_again_when_run_again():
    a, b, plain = learner('skip', cbs=[seen := Poisoned()]), learner('skip'), learner(None)
    fit(a); fit(b); fit(plain)
    assert [where(e) for e in anomalies(a)] == seen.seen and len(seen.seen) == 2 # the poisoned batch, each epoch
    assert all(e['action'] == 'skip' for e in anomalies(a))
    assert torch.isfinite(a.model.weight).all() and not torch.isfinite(plain.model.weight).all()
    assert_same_tensors(a.model.state_dict(), b.model.state_dict()) # run again: the same steps skipped
    assert anomalies(a) == anomalies(b)

def test_a_spike_is_told_from_a_non_finite_loss():
    learn = learner('warn', poison=False, bump=(1, 5))
    fit(learn)
    first = anomalies(learn)[0]
    assert where(first) == (1, 5) or where(first) == (1, 6), first # the first batch (or the one after) at lr 40
    assert {f['kind'] for f in first['found']} == {'spike'}, first
    n = 20 + first['iter'] # the batches before it: the message said one more, the batch itself, before
    assert f'of the last {n};' in first['message'] or f'of the last {n}:' in first['message'], first['message']
    assert anomalies(learner('warn', poison=False)) == [] # lr unchanged: no spike

def test_watching_changes_nothing_when_nothing_happens():
    a, b = learner(None, poison=False), learner('warn', poison=False)
    assert fit(a) == fit(b) == []
    assert_same_tensors(a.model.state_dict(), b.model.state_dict())
    c = compare(a.reproducible.record, b.reproducible.record)
    assert c.same and list(c.inert) == ['callbacks'], c.report() # only the setting differs
    assert 'grad_norm' in b.reproducible.record.batches and 'grad_norm' not in a.reproducible.record.batches

def test_a_resumed_run_judges_as_the_run_never_stopped(tmp_path):
    "A spike 6 batches after a checkpoint needs the 25 batches' history before it: the checkpoint's record holds it"
    full = learner('skip', poison=False, bump=(1, 5), checkpoint_every=5, checkpoint_dir=tmp_path/'ck', keep=10)
    fit(full)
    assert anomalies(full) and where(anomalies(full)[0]) >= (1, 5)
    ck = [p for p in checkpoints(tmp_path/'ck') if p.name.endswith('-epoch0001-batch000005.ckpt')]
    resumed = learner('skip', poison=False, bump=(1, 5), resume_from=ck[0])
    fit(resumed)
    assert_same_tensors(full.model.state_dict(), resumed.model.state_dict())
    assert anomalies(resumed) == anomalies(full)

@pytest.mark.parametrize('bad', ['Skip', 'raise', True, 1])
def test_bad_on_anomaly_is_refused(bad):
    with pytest.raises(ValueError, match=r"on_anomaly must be None, 'warn', 'stop' or 'skip', got"):
        ReproducibleCallback(21, on_anomaly=bad)

def test_skip_leaves_steps_to_the_scaler_and_stops_alike_on_every_rank(monkeypatch):
    """Mixed precision: the gradient scaler skips non-finite steps itself. Distributed: only the gradient norm, equal
    on every rank after the reduction, stops or skips (a loss that differs by rank would part the ranks)"""
    from types import SimpleNamespace
    from fastai.callback.core import CancelStepException
    from fastai.callback.fp16 import MixedPrecision
    from fastai_repro import anomaly
    from fastai_repro.runrecord import RunRecord
    model = nn.Linear(2, 1); model.weight.grad, model.bias.grad = torch.ones(1, 2), torch.ones(1)
    rec = SimpleNamespace(idx=0, record=RunRecord(), row=None, at=(0, True, 3))
    nan = torch.tensor(float('nan'))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        anomaly.AnomalyWatch('skip')(SimpleNamespace(cbs=[MixedPrecision()], model=model, loss=nan), rec)
        last = lambda: rec.record.events[-1]
        assert last()['action'] == 'warn' and 'the gradient scaler skips' in last()['message']
        monkeypatch.setattr(anomaly, 'distributed', lambda: (1, 2))
        plain = SimpleNamespace(cbs=[], model=model, loss=nan)
        anomaly.AnomalyWatch('stop')(plain, rec) # the loss alone: this rank's
        assert last()['action'] == 'warn' and 'the loss differs by rank' in last()['message']
        model.bias.grad = torch.tensor([float('inf')]) # the gradients: the same on every rank
        with pytest.raises(CancelStepException): anomaly.AnomalyWatch('skip')(plain, rec)
        assert rec.record.events[-1]['action'] == 'skip'

def test_skip_leaves_the_batchnorm_statistics_as_they_were():
    """A skipped step makes no update at all: the forward pass of the poisoned batch put NaN into BatchNorm's running
    statistics, and without them given back every later evaluation (and each `model.eval()`) is NaN"""
    def bn(on_anomaly, poison=True):
        learn = learner(on_anomaly, poison=poison, cbs=[seen := Poisoned()])
        learn.model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
        return learn, seen
    skipped, seen = bn('skip'); fit(skipped, 1)
    assert len(seen.seen) == 1 and [where(e) for e in anomalies(skipped)] == seen.seen
    assert all(torch.isfinite(b).all() for b in skipped.model.buffers()), list(skipped.model.buffers())
    assert all(torch.isfinite(p).all() for p in skipped.model.parameters())
    warned, _ = bn('warn'); fit(warned, 1) # the contrast: not skipped, the statistics hold the NaN
    assert not all(torch.isfinite(b).all() for b in warned.model.buffers())
    steps = skipped.model[1].num_batches_tracked.item()
    assert steps == 19, steps # 20 batches, one skipped: not counted either
    stopped, seen = bn('stop'); fit(stopped, 1) # stopped there: the model as it was before that batch
    assert all(torch.isfinite(b).all() for b in stopped.model.buffers())
    assert stopped.model[1].num_batches_tracked.item() == seen.seen[0][1]

def test_skip_and_stop_work_with_a_lazy_module():
    "A lazy BatchNorm has no buffers before its first batch: keeping them must not break the fit"
    for action in ('skip', 'stop'):
        learn = learner(action, poison=False)
        learn.model = nn.Sequential(nn.Linear(4, 8), nn.LazyBatchNorm1d(), nn.Linear(8, 1))
        said = fit(learn, 1) # (the recorder cannot read a lazy module's facts: it says so, as without a watch)
        assert all('recording stopped' in w for w in said) and learn.model[1].running_mean.shape == (8,)
