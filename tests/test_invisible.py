"""Issue 10: the callback is never the source of a difference, never breaks a fit that works without it, marks
interrupted fits, compares only re-runs of one experiment, and refuses bad arguments when it is built."""
import os, random, warnings
import pytest, torch
from torch import nn
from fastai.callback.core import Callback, CancelBatchException, CancelFitException
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.losses import MSELossFlat
from fastai.test_utils import synth_dbunch, synth_learner
from fastai_repro import callback as repro_callback
from fastai_repro.all import ReproducibleCallback, ReproducibilityWarning, compare, determinism_flags, weights_equal
from fastai.losses import CrossEntropyLossFlat
from helpers import assert_same, repro_cbs, scramble
from test_callback_api import small_cnn

def quiet_fit(learn, n=2, **kw):
    "`learn.fit(n)` without the progress bar and the logger"
    with learn.no_bar(), learn.no_logging(): learn.fit(n, **kw)
    return learn

# --- one loader used twice --------------------------------------------------------------------------------------
def shared_loader_learner(callback=True):
    "A learner whose `DataLoaders` holds the same loader object as train and valid (as fastai's own tests do)"
    torch.manual_seed(0)
    dl = synth_dbunch().train
    scramble() # the model is built from whatever state the generators are in
    cbs = [ReproducibleCallback(21, compare_previous=False)] if callback else []
    return Learner(DataLoaders(dl, dl), nn.Linear(1, 1), loss_func=MSELossFlat(), cbs=cbs)

def test_one_loader_used_twice():
    a, b = quiet_fit(shared_loader_learner()), quiet_fit(shared_loader_learner())
    assert weights_equal(a.model, b.model)
    assert compare(a.reproducible.record, b.reproducible.record).same
    assert not weights_equal(quiet_fit(shared_loader_learner(False)).model, quiet_fit(shared_loader_learner(False)).model)

def test_flags_given_back_first_whatever_fails(monkeypatch):
    "A failure while closing (here: releasing a loader) still gives every determinism flag back"
    before = determinism_flags()
    learn = shared_loader_learner()
    def broken(dl): raise RuntimeError('release failed')
    monkeypatch.setattr(repro_callback, 'release_loader', broken)
    with pytest.raises(RuntimeError, match='release failed'): quiet_fit(learn, 1)
    assert determinism_flags() == before and repro_callback._open_scopes == []

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
        if self.training and self.learn.epoch == self.ep and self.learn.iter == self.it: raise self.exc('stopped by the test')

def run_stopped(exc=None):
    "`fit(2)` of a synthetic learner with the callback, stopped by an `exc()` at epoch 1, train batch 2"
    learn = synth_learner(cbs=[ReproducibleCallback(21, compare_previous=False)] + ([StopAt(exc)] if exc else []))
    with learn.no_bar(), learn.no_logging():
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

class SkipBatch(Callback):
    "Cancels training batch 1 of each epoch after its forward pass"
    def after_pred(self):
        if self.training and self.learn.iter == 1: raise CancelBatchException()

def test_cancelled_batch_row():
    rec = quiet_fit(synth_learner(cbs=[ReproducibleCallback(21, compare_previous=False), SkipBatch()]), 1).reproducible.record
    rows = rec.batches.set_index(['phase', 'iter'])
    skipped, before = rows.loc[('train', 1)], rows.loc[('train', 0)]
    assert skipped.cancelled == True and skipped.isna()['loss'] and skipped.isna()['rng_torch_step']
    assert rows.cancelled.sum() == 1 and not before.isna()['loss']
    full = quiet_fit(synth_learner(cbs=ReproducibleCallback(21, compare_previous=False)), 1).reproducible.record
    c = compare(full, rec)
    assert c.causes == ['interrupted'] and 'train batch 1 was cancelled' in c.fixes['interrupted'], c.report()

# --- live comparison only with a re-run of the same experiment ----------------------------------------------------
class ExtraDraw(Callback):
    "Draws from torch's generator after each batch: an accidental difference"
    def after_batch(self): torch.rand(1)

def test_unrelated_experiments_do_not_warn_each_other():
    with warnings.catch_warnings():
        warnings.simplefilter('error', ReproducibilityWarning)
        quiet_fit(synth_learner(cbs=ReproducibleCallback(21)), 1)
        quiet_fit(synth_learner(n_trn=20, cbs=[ReproducibleCallback(21), ExtraDraw()]), 1) # another experiment

def test_a_rerun_of_the_same_code_is_compared():
    "The contrast: the same line run twice (a loop, a notebook cell run again) is compared, and warns once"
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        for extra in ([], [ExtraDraw()]): quiet_fit(synth_learner(cbs=[ReproducibleCallback(21)] + extra), 1)
    divergences = [w for w in ws if issubclass(w.category, ReproducibilityWarning) and 'differs' in str(w.message)]
    assert len(divergences) == 1 and 'rng:' in str(divergences[0].message)

def test_previous_runs_are_bounded():
    for i in range(3 * repro_callback.PREVIOUS_KEPT): repro_callback._remember((21, (('f', i),)), object())
    assert len(repro_callback._previous) == repro_callback.PREVIOUS_KEPT

def test_interrupted_run_is_no_reference():
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        for stop in (True, False):
            learn = synth_learner(cbs=[ReproducibleCallback(21)] + ([StopAt(CancelFitException)] if stop else []))
            quiet_fit(learn)
    assert not [w for w in ws if issubclass(w.category, ReproducibilityWarning)]

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

# --- calls between two fits leave the second fit as it was -------------------------------------------------------------
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
def test_calls_between_fits_change_nothing(new_dls, between):
    "`fit; X; fit` ends bit-identical to `fit; fit`, X leaves every generator and flag as it found them, warns nothing"
    import matplotlib; matplotlib.use('Agg')
    def run(call):
        cbs = repro_cbs() # before the model, so that its initial weights are covered
        learn = Learner(new_dls(), small_cnn(), loss_func=CrossEntropyLossFlat(), cbs=cbs)
        with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
            warnings.simplefilter('error', ReproducibilityWarning)
            if call: BETWEEN[between](learn) # before any fit too
            learn.fit(1, 1e-3)
            if call:
                flags, py, st = determinism_flags(), random.getstate(), torch.get_rng_state()
                BETWEEN[between](learn)
                assert determinism_flags() == flags and random.getstate() == py and torch.equal(torch.get_rng_state(), st)
            learn.fit(1, 1e-3)
        assert learn.reproducible.n_fit == 2 and len(learn.reproducible.record.fits) == 2
        return learn
    assert_same(run(True), run(False))
