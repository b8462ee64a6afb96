"""Issue 30: events fired by hand, as fastai's own notebook tests do (13a learner, 19 mixup), inside `with learn:` or
outside it, before or after a real fit, with fastai's loop attributes (`iter`, `epoch`, `n_iter`, `dl`, `training`)
missing or stale: the callback raises nothing, the event's other callbacks run as they do without it, and after
`with learn:` every generator, determinism flag and the fit counter are as they were before the block."""
import numpy as np, pytest, torch
from torch import nn
from fastai.callback.core import Callback
from fastai.callback.mixup import CutMix, MixUp
from fastai.callback.progress import ProgressCallback
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner, Recorder
from fastai.losses import CrossEntropyLossFlat
from fastai.test_utils import synth_learner
from fastai_repro.all import (ReproducibleCallback, compare, determinism_flags, get_rng_state, open_scopes,
                              weights_equal)
from helpers import quiet, quiet_fit

EVENTS = ['before_fit', 'before_epoch', 'before_train', 'before_batch', 'after_pred', 'after_loss', 'before_backward',
          'after_backward', 'before_step', 'after_step', 'after_batch', 'after_train', 'before_validate',
          'after_validate', 'after_epoch', 'after_fit', 'after_cancel_batch', 'after_cancel_train',
          'after_cancel_validate', 'after_cancel_epoch', 'after_cancel_fit']
# what `stripped` takes away, after `with learn:` has fired `before_fit`: fastai's loop attributes, all of them
LOOP = ('iter', 'epoch', 'n_iter', 'dl', 'training', 'loss', 'n_epoch', 'train_iter', 'pct_train')

class Probe(Callback):
    "Runs after every other callback: keeps each event that reaches it, with the learner's and the model's mode"
    order = 99
    def __init__(self): "Nothing seen yet"; self.got = []
    def __call__(self, event_name):
        "Note the event (it came this far: no callback before raised), then run it as usual"
        self.got.append((event_name, self.learn.__dict__.get('training'), self.learn.model.training))
        return super().__call__(event_name)

def learner(callback:bool, recorder:bool=False) -> Learner:
    "A fresh `synth_learner`, a `Probe` last, `ReproducibleCallback(21)` or not; no `Recorder` nor bar unless asked"
    cbs = [Probe()] + ([ReproducibleCallback(21, compare_previous=False)] if callback else [])
    learn = synth_learner(cbs=cbs)
    if not recorder: # its metrics need the resets of a real loop, with the callback or without
        learn.remove_cbs([c for c in learn.cbs if isinstance(c, (Recorder, ProgressCallback))])
    return learn

def state(learn) -> dict:
    "Every generator the callback seeds, the determinism flags, its fit counter and record, the scopes left open"
    cb = getattr(learn, 'reproducible', None)
    return dict(rng=get_rng_state(learn.dls), flags=determinism_flags(), n_fit=cb and cb.n_fit,
                record=cb and (len(cb.record.fits), len(cb.record.batches), len(cb.record.events)),
                open=len(open_scopes()))

def changes(a:dict, b:dict) -> list:
    "The parts of two `state` snapshots that differ, by name"
    ra, rb = a['rng'], b['rng']
    out = [k for k in ('flags', 'n_fit', 'record', 'open') if a[k] != b[k]]
    if ra['random'] != rb['random']: out.append('python random')
    if not all(np.array_equal(x, y) for x, y in zip(ra['numpy'], rb['numpy'])): out.append('numpy')
    if not torch.equal(ra['torch'], rb['torch']): out.append('torch')
    if ra['loaders'] != rb['loaders']: out.append('loaders')
    return out

def fire(event:str, callback:bool, when:str='fresh', inside:bool=True):
    """Fire `event` by hand on a new learner, its batch split as fastai's notebooks do, inside `with learn:` or not.
    `when`: 'fresh' (no fit yet: `iter`, `n_iter`, `dl` unset), 'stripped' (every loop attribute deleted) or
    'after_fit' (left stale by a fit). Returns what the event did ('ok' or the error), the events the probe saw, and
    the learner's `state` before and after."""
    learn = learner(callback)
    if when == 'after_fit': quiet_fit(learn)
    b, probe = learn.dls.valid.one_batch(), learn.probe
    before = state(learn)
    def go():
        "Split the batch, take the loop attributes away if asked, fire the event"
        learn._split(b)
        if when == 'stripped':
            for k in LOOP: learn.__dict__.pop(k, None)
        probe.got.clear()
        learn(event)
    try:
        if inside:
            with learn: go()
        else: go()
        out = 'ok'
    except Exception as e: out = f'{type(e).__name__}: {e}'
    return out, probe.got, before, state(learn)

@pytest.mark.parametrize('when', ['fresh', 'stripped', 'after_fit'])
@pytest.mark.parametrize('event', EVENTS)
def test_event_fired_by_hand_inside_with(event, when):
    "As without the callback: the same outcome, the same events reach the last callback; the `with` changes nothing"
    out, got, before, after = fire(event, True, when)
    plain_out, plain_got, _, _ = fire(event, False, when)
    assert 'ReproducibleCallback' not in out, out
    assert (out, got) == (plain_out, plain_got)
    if when != 'stripped': assert out == 'ok' # fastai's own callbacks need `epoch` and the like: not ours to give
    if out == 'ok': assert got[0][0] == event # then `with learn:`'s `after_epoch` and `after_fit`
    assert not changes(before, after), changes(before, after)

@pytest.mark.parametrize('when', ['fresh', 'after_fit'])
@pytest.mark.parametrize('event', EVENTS)
def test_event_fired_by_hand_outside_with(event, when):
    "Outside every entry point the callback does nothing: no seeding, no scope, no record, whatever the event"
    out, got, before, after = fire(event, True, when, inside=False)
    plain_out, plain_got, _, _ = fire(event, False, when, inside=False)
    assert 'ReproducibleCallback' not in out, out
    assert (out, got) == (plain_out, plain_got)
    assert not changes(before, after), changes(before, after)

def hand_loop(learn):
    "One batch of each phase by hand, as fastai's notebooks do (`learn.iter` as the caller left it)"
    if learn.opt is None: learn.create_opt() # `Recorder` notes the learning rate of each training batch
    learn.epoch, learn.training, learn.dl = 0, True, learn.dls.train
    learn.n_iter = len(learn.dl) # `TrainEvalCallback.after_batch` needs it; `learn.iter` stays as it was
    learn._split(learn.dls.one_batch())
    for e in EVENTS[:-5]: learn(e)

@pytest.mark.parametrize('fitted', [False, True])
def test_hand_fired_loop_in_with_changes_nothing(fitted):
    "`[fit;] with learn: <every event by hand>; fit` ends bit-identical to `[fit;] fit`, with the same record"
    def run(between:bool):
        "The run, with the events fired by hand in between or not"
        learn = learner(True, recorder=True)
        if fitted: quiet_fit(learn)
        if between:
            before = state(learn)
            with quiet(learn), learn: hand_loop(learn)
            assert not changes(before, state(learn)), changes(before, state(learn))
        return quiet_fit(learn)
    a, b = run(True), run(False)
    assert weights_equal(a.model, b.model) and a.reproducible.n_fit == 1 + fitted
    assert compare(a.reproducible.record, b.reproducible.record).same

# --- fastai's 19_callback.mixup notebook: MixUp and CutMix fired by hand in `with Learner(...) as learn:` ------------
def image_dls(n=32, bs=8) -> DataLoaders:
    "32 random 3x8x8 'images' in 4 classes; the training loader unshuffled, so that `one_batch` is the same every time"
    g = torch.Generator().manual_seed(0)
    items = [(torch.rand(3, 8, 8, generator=g), torch.tensor(i % 4)) for i in range(n)]
    return DataLoaders(DataLoader(items, bs=bs), DataLoader(items, bs=bs))

def mixed(mix_cls, callback:bool):
    "The notebook's cell: `before_train` and `before_batch` by hand (no batch loop: `learn.iter` unset); what it mixed"
    mix = mix_cls(1.)
    cbs = [mix] + ([ReproducibleCallback(21, compare_previous=False)] if callback else []) # before the model
    dls = image_dls()
    learn = Learner(dls, nn.Sequential(nn.Flatten(), nn.Linear(3*8*8, 4)), loss_func=CrossEntropyLossFlat(), cbs=cbs)
    before = state(learn)
    with learn:
        learn.epoch, learn.training = 0, True
        learn.dl = dls.train
        b = dls.one_batch()
        learn._split(b)
        x = b[0].clone() # `CutMix` pastes into the batch's own tensor
        torch.manual_seed(0) # in the block: `with learn:` is isolated, and the callback seeds it from its own key
        learn('before_train')
        learn('before_batch')
    if callback: assert not changes(before, state(learn)), changes(before, state(learn))
    assert learn.loss_func == mix.lf # `before_train` ran: the targets are not stacked, the loss mixes them
    assert torch.equal(mix.x, learn.xb[0]) and torch.equal(mix.y, learn.yb[0]) # what the next cell shows
    return x, learn.xb[0], mix.yb1[0], mix.lam

@pytest.mark.parametrize('mix_cls', [MixUp, CutMix])
def test_mixup_notebook(mix_cls):
    "The cell mixes the batch with the callback, bit-identically to the same cell without it (torch seeded alike)"
    x, xb, yb1, lam = mixed(mix_cls, True)
    assert not torch.equal(xb, x) # the batch was mixed
    _, plain_xb, plain_yb1, plain_lam = mixed(mix_cls, False)
    assert torch.equal(xb, plain_xb) and torch.equal(yb1, plain_yb1) and torch.equal(lam, plain_lam)
