"""Issue 10: the callback is never the source of a difference, never breaks a fit that works without it, marks
interrupted fits, compares only re-runs of one experiment, and refuses bad arguments when it is built."""
import os, warnings
from contextlib import contextmanager
import numpy as np, pytest, torch
from torch import nn
from fastai.callback.core import Callback, CancelBatchException, CancelFitException
from fastai.callback.training import GradientAccumulation
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.losses import MSELossFlat
from fastai.test_utils import synth_dbunch, synth_learner
from fastai_repro import scope as repro_scope
from fastai_repro.livecheck import PREVIOUS, PREVIOUS_KEPT, PreviousRuns
from fastai.losses import CrossEntropyLossFlat
from fastai_repro.all import (ReproducibleCallback, ReproducibilityWarning, compare, determinism_flags, get_rng_state,
                              open_scopes, weights_equal)
from helpers import assert_same, fit_x_fit, quiet, quiet_fit, repro_cbs, scramble, small_cnn

# --- one loader used twice --------------------------------------------------------------------------------------
def shared_loader_learner(callback=True):
    "A learner whose `DataLoaders` holds the same loader object as train and valid (as fastai's own tests do)"
    torch.manual_seed(0)
    dl = synth_dbunch().train
    scramble() # the model is built from whatever state the generators are in
    cbs = [ReproducibleCallback(21, compare_previous=False)] if callback else []
    return Learner(DataLoaders(dl, dl), nn.Linear(1, 1), loss_func=MSELossFlat(), cbs=cbs)

def test_one_loader_used_twice():
    a, b = quiet_fit(shared_loader_learner(), 2), quiet_fit(shared_loader_learner(), 2)
    assert weights_equal(a.model, b.model)
    assert compare(a.reproducible.record, b.reproducible.record).same
    assert not weights_equal(quiet_fit(shared_loader_learner(False), 2).model,
                             quiet_fit(shared_loader_learner(False), 2).model)

def test_flags_given_back_first_whatever_fails(monkeypatch):
    "A failure while closing (here: releasing a loader) comes after the flags are back, and does not break the fit"
    before, seen = determinism_flags(), []
    learn = shared_loader_learner()
    def broken(dl):
        "Note the flags when the loader is released, then fail"
        seen.append(determinism_flags()); raise RuntimeError('release failed')
    monkeypatch.setattr(repro_scope, 'release_loader', broken)
    with pytest.warns(ReproducibilityWarning, match='release failed'): quiet_fit(learn, 1)
    assert seen == [before] and determinism_flags() == before and open_scopes() == []
    assert learn.reproducible.record.fits[0]['end'] == {'status': 'completed'}

# --- one callback, two learners -----------------------------------------------------------------------------------
def test_one_callback_two_learners_refused_at_once():
    cb = ReproducibleCallback(21, compare_previous=False)
    first = synth_learner(cbs=cb)
    with pytest.raises(ValueError, match=r'one ReproducibleCallback per learner.*ReproducibleCallback\(seed\)'):
        synth_learner(cbs=cb)
    other = synth_learner()
    with pytest.raises(ValueError, match='one ReproducibleCallback per learner'): other.add_cb(cb)
    assert not any(c is cb for c in other.cbs) and cb.learn is first
    quiet_fit(first, 1) # the first learner trains and records its own batches
    rows = first.reproducible.record.batches
    assert list(rows.phase) == ['train'] * 10 + ['valid'] * 2 and rows.loss.notna().all()
    first.remove_cb(cb) # moved, not shared: allowed, and said
    with pytest.warns(ReproducibilityWarning, match='moved to a second learner'): quiet_fit(other.add_cb(cb), 1)

# --- interrupted fits ---------------------------------------------------------------------------------------------
class StopAt(Callback):
    "Raises a new `exc()` in the middle of training batch `it` of epoch `ep` (after the forward pass)"
    def __init__(self, exc, ep=1, it=2): self.exc, self.ep, self.it = exc, ep, it
    def after_pred(self):
        if self.training and self.learn.epoch == self.ep and self.learn.iter == self.it:
            raise self.exc('stopped by the test')

def run_stopped(exc=None):
    "`fit(2)` of a synthetic learner with the callback, stopped by an `exc()` at epoch 1, train batch 2"
    learn = synth_learner(cbs=[ReproducibleCallback(21, compare_previous=False)] + ([StopAt(exc)] if exc else []))
    with quiet(learn):
        try: learn.fit(2)
        except BaseException as e:
            if not isinstance(e, exc): raise
    return learn.reproducible.record

@pytest.mark.parametrize('exc, status', [(KeyboardInterrupt, 'interrupted'), (RuntimeError, 'error'),
                                         (CancelFitException, 'cancelled')])
def test_interrupted_fit_is_marked_and_named(exc, status):
    full, stopped = run_stopped(), run_stopped(exc)
    assert full.fits[0]['end'] == {'status': 'completed'}
    end = stopped.fits[0]['end']
    assert (end['status'], end['epoch'], end['phase'], end['iter']) == (status, 1, 'train', 2)
    assert end['reason'].startswith(exc.__name__)
    rows = stopped.batches
    last = rows[(rows.epoch == 1) & (rows.phase == 'train') & (rows.iter == 2)].iloc[0]
    assert last.cancelled == True and last.isna()['loss'] # the batch under way: no loss of another batch
    for a, b, who in ((full, stopped, 'run b'), (stopped, full, 'run a')):
        c = compare(a, b)
        assert c.causes == ['interrupted'], c.report()
        assert c.fixes['interrupted'].startswith(f'{who} stopped at fit 0, epoch 1, train batch 2 ({status}: ')
    assert compare(stopped, run_stopped(exc)).same # two runs stopped alike are the same run

class Hidden(Callback):
    "A test callback in every run that acts only while its class's `on` is set: the runs' callbacks are the same"
    on = False # a switch outside every setting, as a stray draw or a stop in user code would be

@contextmanager
def switched(*classes):
    "Turn on the `Hidden` callbacks of `classes` for the block"
    for c in classes: c.on = True
    try: yield
    finally:
        for c in classes: c.on = False

class StopAfter(Hidden):
    "Cancels the fit after training batch 2 of epoch 0 has finished (as `TerminateOnNaNCallback` does)"
    def after_batch(self):
        if StopAfter.on and self.training and self.learn.iter == 2: raise CancelFitException()

class ExtraDraw(Hidden):
    "Draws from torch's generator during each batch, after the forward pass: an accidental difference"
    def after_pred(self):
        if ExtraDraw.on: torch.rand(1)

class DrawBetween(Hidden):
    "Draws from torch's generator after each batch has ended: every batch is seeded from its key, so nothing changes"
    def after_batch(self):
        if DrawBetween.on: torch.rand(1)

def test_stop_between_batches_compares_the_finished_ones():
    synth = lambda: synth_learner(cbs=[ReproducibleCallback(21, compare_previous=False), ExtraDraw(), StopAfter()])
    with switched(StopAfter): stopped = quiet_fit(synth(), 2)
    end = stopped.reproducible.record.fits[0]['end']
    assert (end['epoch'], end['phase'], end['iter']) == (0, 'train', 3) # the first batch it did not finish
    assert 'cancelled' not in stopped.reproducible.record.columns # batch 2 ran to its end
    full = quiet_fit(synth(), 2)
    with switched(ExtraDraw): noisy = quiet_fit(synth(), 2)
    assert compare(full.reproducible.record, stopped.reproducible.record).causes == ['interrupted']
    c = compare(noisy.reproducible.record, stopped.reproducible.record) # differs from batch 0 on: still seen
    assert c.causes == ['rng', 'interrupted'] and c.first_divergence.iter == 0, c.report()

def test_a_draw_between_batches_changes_nothing():
    "Each batch draws from its own key: a draw after a batch has ended reaches no later batch, and no cause is named"
    synth = lambda: synth_learner(cbs=[ReproducibleCallback(21, compare_previous=False), DrawBetween()])
    quiet = quiet_fit(synth(), 2)
    with switched(DrawBetween): drawn = quiet_fit(synth(), 2)
    assert weights_equal(quiet.model, drawn.model)
    assert compare(quiet.reproducible.record, drawn.reproducible.record).same

def test_batch_cancelled_after_its_loss_keeps_it():
    "`GradientAccumulation` cancels every batch but one after the loss: the rows keep their own losses"
    rec = quiet_fit(synth_learner(cbs=[ReproducibleCallback(21, compare_previous=False),
                                       GradientAccumulation(n_acc=32)]), 1).reproducible.record
    train = rec.batches[rec.batches.phase == 'train']
    assert train.cancelled.fillna(False).astype(bool).tolist() == [True, False] * 5 # one step every 2 batches of 16
    assert train.loss.notna().all() and train.loss.nunique() == 10

class FailAfterUs(Callback):
    "Raises in `before_fit`, after the callback (order -11) has opened its scope"
    def before_fit(self): raise RuntimeError('inference failed')

def test_failed_inference_call_closes_what_it_opened():
    learn = quiet_fit(synth_learner(cbs=ReproducibleCallback(21, compare_previous=False)), 1)
    flags, rng = determinism_flags(), get_rng_state(learn.dls)
    with pytest.raises(RuntimeError, match='inference failed'): learn.validate(cbs=FailAfterUs())
    assert determinism_flags() == flags and open_scopes() == []
    after = get_rng_state(learn.dls)
    assert after['random'] == rng['random'] and torch.equal(after['torch'], rng['torch'])

class SkipBatch(Hidden):
    "Cancels training batch 1 of each epoch after its forward pass"
    def after_pred(self):
        if SkipBatch.on and self.training and self.learn.iter == 1: raise CancelBatchException()

def test_cancelled_batch_row():
    learn = synth_learner(cbs=[ReproducibleCallback(21, compare_previous=False), SkipBatch()])
    with switched(SkipBatch): rec = quiet_fit(learn, 1).reproducible.record
    rows = rec.batches.set_index(['phase', 'iter'])
    skipped, before = rows.loc[('train', 1)], rows.loc[('train', 0)]
    assert skipped.cancelled == True and skipped.isna()['loss'] # not batch 0's loss, which `learn.loss` still holds
    assert not skipped.isna()['rng_torch_step'] # torch's state after this batch, its own value
    assert rows.cancelled.sum() == 1 and not before.isna()['loss']
    full = quiet_fit(synth_learner(cbs=[ReproducibleCallback(21, compare_previous=False), SkipBatch()]), 1)
    c = compare(full.reproducible.record, rec)
    assert c.causes == ['interrupted'] and 'train batch 1 was cancelled' in c.fixes['interrupted'], c.report()

# --- live comparison only with a re-run of the same experiment ----------------------------------------------------
def test_unrelated_experiments_do_not_warn_each_other():
    "A re-run of one experiment is compared with its first run (no divergence); another experiment with nothing"
    with warnings.catch_warnings(), switched(ExtraDraw):
        warnings.simplefilter('error', ReproducibilityWarning)
        runs = [quiet_fit(synth_learner(cbs=ReproducibleCallback(21)), 1) for _ in range(2)] # one line, run twice
        other = quiet_fit(synth_learner(n_trn=20, cbs=[ReproducibleCallback(21), ExtraDraw()]), 1) # another experiment
    assert runs[1].reproducible.reference is runs[0].reproducible.record # the comparison ran, and found nothing
    assert other.reproducible.reference is None and PREVIOUS.records()[-1] is other.reproducible.record

def test_a_rerun_of_the_same_code_is_compared():
    "The contrast: the same line run twice (a loop, a notebook cell run again) is compared, and warns once"
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        for extra in (False, True):
            with switched(*[ExtraDraw] * extra):
                quiet_fit(synth_learner(cbs=[ReproducibleCallback(21), ExtraDraw()]), 1)
    divergences = [w for w in ws if issubclass(w.category, ReproducibilityWarning) and 'differs' in str(w.message)]
    assert len(divergences) == 1 and 'rng:' in str(divergences[0].message)

def test_previous_runs_are_bounded(monkeypatch):
    runs = PreviousRuns()
    n = PREVIOUS_KEPT
    for i in range(3 * n): runs.remember((21, (('f', i),)), i)
    assert runs.records() == list(range(2 * n, 3 * n)) # the oldest are forgotten

def test_interrupted_run_is_no_reference():
    "A stopped run is not kept as the reference of its experiment; the next complete run is"
    kept = []
    for stop in (True, False):
        learn = synth_learner(cbs=[ReproducibleCallback(21)] + ([StopAt(CancelFitException)] if stop else []))
        quiet_fit(learn, 2)
        kept.append(PREVIOUS.records())
    assert kept == [[], [learn.reproducible.record]]

def test_exported_callback_has_no_experiment(vision_dls, tmp_path):
    "A callback loaded with an exported learner is no re-run of the code that built the original"
    from fastai.learner import load_learner
    cb = ReproducibleCallback(21)
    learn = quiet_fit(Learner(vision_dls(), small_cnn(), loss_func=CrossEntropyLossFlat(), path=tmp_path, cbs=cb), 1)
    learn.export('x.pkl')
    loaded = load_learner(tmp_path/'x.pkl')
    assert learn.reproducible._key and loaded.reproducible._key is None
    quiet_fit(loaded, 1)
    assert PREVIOUS.records() == [learn.reproducible.record] # the loaded run is not kept

# --- bad arguments refused when the callback is built --------------------------------------------------------------
@pytest.mark.parametrize('kwargs, msg', [
    (dict(first_fit=-1), 'first_fit must be an int >= 0, got -1'), (dict(first_fit=1.5), 'got 1.5'),
    (dict(first_fit='x'), "got 'x'"), (dict(first_fit=True), 'got True'), (dict(every=True), 'every must be an int'),
    (dict(strict='yes'), "strict must be True or False, got 'yes'"), (dict(isolate_data=None), 'isolate_data must be'),
    (dict(reference=42), 'reference must be a RunRecord'), (dict(save_to=3), "save_to must be a folder's path")])
def test_bad_arguments_refused(kwargs, msg):
    with pytest.raises(ValueError, match=msg.replace('(', r'\(')): ReproducibleCallback(21, **kwargs)

def test_save_to_a_file_refused_before_training(tmp_path):
    (tmp_path/'runs').write_text('a file')
    with pytest.raises(ValueError, match="is a file.*pass a folder"): ReproducibleCallback(21, save_to=tmp_path/'runs')

def test_record_file_gets_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        learn = quiet_fit(synth_learner(cbs=ReproducibleCallback(21, save_to=tmp_path, compare_previous=False)), 1)
        open(tmp_path/'other', 'w').close()
    finally: os.umask(old)
    mode = learn.reproducible.saved_as.stat().st_mode & 0o777
    assert mode == (tmp_path/'other').stat().st_mode & 0o777 == 0o640

def test_model_without_parameters_no_false_warning():
    with warnings.catch_warnings():
        warnings.simplefilter('error', ReproducibilityWarning)
        Learner(synth_dbunch(), nn.Identity(), loss_func=MSELossFlat(), cbs=ReproducibleCallback(21))
    model = nn.Linear(1, 1) # the contrast: a model with weights, built before the callback seeded
    with pytest.warns(ReproducibilityWarning, match='built before'):
        Learner(synth_dbunch(), model, loss_func=MSELossFlat(), cbs=ReproducibleCallback(21))

# --- calls between two fits leave the second fit as it was ---------------------------------------------------------
def by_hand(learn):
    "Fire the events of a fit by hand, as fastai's own tests do: the callback stays out of them"
    learn('before_fit'); learn('before_epoch'); learn('after_epoch'); learn('after_fit')

def with_learn(learn):
    "`with learn:` around a draw"
    with learn: torch.rand(3)

BETWEEN = dict(tta=lambda l: l.tta(), with_learn=with_learn, summary=lambda l: l.summary(), by_hand=by_hand,
               show_results=lambda l: l.show_results(max_n=2), predict=lambda l: l.predict(l.dls.valid_ds.items[0]),
               get_preds=lambda l: l.get_preds(), validate=lambda l: l.validate())

@pytest.mark.parametrize('between', list(BETWEEN))
def test_calls_between_fits_change_nothing(vision_dls, between):
    "`fit; X; fit` ends bit-identical to `fit; fit`, X leaves every generator and flag as it found them, warns nothing"
    import matplotlib; matplotlib.use('Agg')
    def checked(learn):
        "The call `between`, checked to leave every generator, flag and gradient as it found them"
        flags, st, grads = determinism_flags(), get_rng_state(learn.dls), [p.grad for p in learn.model.parameters()]
        BETWEEN[between](learn)
        now = get_rng_state(learn.dls)
        assert determinism_flags() == flags and now['random'] == st['random'] and now['loaders'] == st['loaders']
        assert torch.equal(now['torch'], st['torch']) and all(map(np.array_equal, now['numpy'], st['numpy']))
        assert all(g is p.grad for g, p in zip(grads, learn.model.parameters()))
    def run(call):
        "`fit; X; fit` (`call`: with X before the first fit too, and checked) or `fit; fit`"
        cbs = repro_cbs() # before the model, so that its initial weights are covered
        learn = Learner(vision_dls(), small_cnn(), loss_func=CrossEntropyLossFlat(), cbs=cbs)
        with quiet(learn), warnings.catch_warnings():
            warnings.simplefilter('error', ReproducibilityWarning)
            if call: BETWEEN[between](learn) # before any fit too
            fit_x_fit(learn, checked if call else None, fit=lambda learn: learn.fit(1, 1e-3))
        assert learn.reproducible.n_fit == 2 and len(learn.reproducible.record.fits) == 2
        return learn
    assert_same(run(True), run(False))
