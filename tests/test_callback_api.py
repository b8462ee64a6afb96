"""ReproducibleCallback through every fastai entry point a user reaches for, on the digits images."""
import copy, warnings
import numpy as np, pytest, torch
from fastai.callback.core import Callback
from fastai.learner import Learner, load_learner
from fastai.losses import CrossEntropyLossFlat
from fastai.vision.learner import vision_learner
from fastai.vision.models import resnet18
from fastai_repro.all import (ReproducibleCallback, ReproducibilityWarning, determinism_flags, get_rng_state,
                              weights_equal)
from helpers import (LR_FIND_ITERS, Trace, assert_same, fit_x_fit, make_learner, quiet, quiet_fit, same_run,
                     small_cnn)

FITS = {'fit': (2, 1e-3), 'fit_one_cycle': (2,)} # the arguments each fit method is called with

def other_session(dls, s):
    "Stands for two sessions: the global generators are in another state when the learner is built"
    torch.manual_seed(s) # after the DataLoaders: their RandomSplitter(seed=21) reseeds torch globally
    return dls

@pytest.mark.parametrize('how', ['fit', 'fit_one_cycle'])
def test_vision_learner(vision_dls, how):
    def run(cb, s):
        "A `vision_learner` fitted by `how`, with the callback or not, in the session `s`"
        dls = other_session(vision_dls(), s)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            cbs = [ReproducibleCallback(21, compare_previous=False)] if cb else []
            return quiet_fit(vision_learner(dls, resnet18, pretrained=False, cbs=cbs + [Trace()]), *FITS[how], how=how)
    assert_same(run(True, 1), run(True, 2))
    assert not same_run(run(False, 1), run(False, 2))

def test_plain_learner(new_dls):
    "`Learner(dls, model, cbs=...)`: the model is built after the callback seeds, so its init is covered"
    def run(cb, s):
        "A `Learner` fitted, with the callback or not, in the session `s`"
        dls = other_session(new_dls(), s)
        cbs = [ReproducibleCallback(21, compare_previous=False)] if cb else [] # built before the model: init covered
        return quiet_fit(Learner(dls, small_cnn(), loss_func=CrossEntropyLossFlat(), cbs=cbs + [Trace()]), *FITS['fit'])
    assert_same(run(True, 1), run(True, 2))
    assert not same_run(run(False, 1), run(False, 2))

@pytest.mark.parametrize('attach', ['fit_cbs', 'add_cb'])
def test_callback_attached_later(new_dls, attach):
    "Attached after the model is built: the fits are covered; the model is the same object state for both runs"
    model = small_cnn()
    def run(cb):
        "A copy of `model` fitted, with the callback attached by `attach` or without it"
        learn = Learner(new_dls(), copy.deepcopy(model), loss_func=CrossEntropyLossFlat(), cbs=Trace())
        cbs = ReproducibleCallback(21) if cb else None
        with quiet(learn):
            if attach == 'add_cb' and cb: learn.add_cb(cbs)
            learn.fit(2, 1e-3, cbs=cbs if attach == 'fit_cbs' else None)
        return learn
    assert_same(run(True), run(True))
    assert not same_run(run(False), run(False))

def test_get_preds_and_validate_do_not_disturb(vision_dls):
    def inference(learn):
        "`get_preds`, `validate` and `get_preds` on a test loader"
        learn.get_preds(); learn.validate(); learn.get_preds(dl=learn.dls.test_dl(learn.dls.valid_ds.items[:5]))
    def run(between):
        "`fit_one_cycle(1)`; `between`; `fit_one_cycle(1)`"
        return fit_x_fit(make_learner(vision_dls()), between, fit=lambda learn: learn.fit_one_cycle(1))
    assert_same(run(inference), run(None))

def test_generators_after_lr_find_equal_before(new_dls):
    learn = make_learner(new_dls())
    grads = [p.grad for p in learn.model.parameters()]
    before = get_rng_state(learn.dls)
    with quiet(learn): learn.lr_find(show_plot=False, num_it=LR_FIND_ITERS)
    after = get_rng_state(learn.dls)
    assert after['random'] == before['random'] and after['loaders'] == before['loaders']
    assert torch.equal(after['torch'], before['torch'])
    assert all(np.array_equal(x, y) for x, y in zip(after['numpy'], before['numpy'])) # key, pos, gauss cache
    assert [p.grad for p in learn.model.parameters()] == grads == [None] * len(grads)
    assert learn.reproducible.n_fit == 0

class Boom(Callback):
    "Raises in the middle of the first epoch"
    def after_batch(self):
        if self.iter == 2: raise RuntimeError('boom')

def test_flags_restored_after_fit_and_after_crash(new_dls):
    torch.backends.cudnn.benchmark = True
    try:
        before = determinism_flags()
        learn = make_learner(new_dls())
        with quiet(learn):
            learn.fit(1)
            assert determinism_flags() == before
            with pytest.raises(RuntimeError, match='boom'): learn.fit(1, cbs=Boom())
        assert determinism_flags() == before
        assert before['cudnn.benchmark'] is True and before['deterministic_algorithms'] is False
    finally: torch.backends.cudnn.benchmark = False

def test_flags_restored_after_cancelled_fit(new_dls):
    from fastai.callback.core import CancelFitException
    class Stop(Callback):
        "Cancels the fit after its first batch"
        def after_batch(self): raise CancelFitException()
    before = determinism_flags()
    learn = make_learner(new_dls())
    quiet_fit(learn, 2, cbs=Stop())
    assert determinism_flags() == before and learn.reproducible.n_fit == 1

def test_export_and_load_learner(new_dls, tmp_path):
    learn = make_learner(new_dls())
    learn.remove_cb(learn.trace)
    quiet_fit(learn)
    learn.export(tmp_path/'export.pkl')
    loaded = load_learner(tmp_path/'export.pkl')
    assert loaded.reproducible.seed == 21 and weights_equal(loaded.model, learn.model)
    with warnings.catch_warnings():
        warnings.simplefilter('error', ReproducibilityWarning) # a loaded learner is no callback attached late
        pred = loaded.predict(new_dls().valid_ds.items[0])
    assert str(pred[0]) in ('True', 'False')

@pytest.mark.parametrize('bad', [-1, 2**32, 1.5, '21', True, [21]])
def test_bad_seeds_rejected(bad):
    with pytest.raises(ValueError, match=r'\[0, 2\*\*32\)'): ReproducibleCallback(bad)

def test_seed_none_is_drawn_and_kept(new_dls):
    "An unplanned run (seed=None) can be repeated from the seed it kept"
    def run(seed):
        "A `Learner` with the callback of `seed`, fitted"
        dls = other_session(new_dls(), seed or 1)
        cbs = [ReproducibleCallback(seed, compare_previous=False), Trace()] # before the model, so its init is covered
        learn = Learner(dls, small_cnn(), loss_func=CrossEntropyLossFlat(), cbs=cbs)
        return quiet_fit(learn, *FITS['fit'])
    a = run(None)
    seed = a.reproducible.seed
    assert 0 <= seed < 2**32 and a.reproducible.record.fits[0]['seed'] == seed
    assert_same(a, run(seed))
    assert not same_run(a, run(seed ^ 1))

def test_newer_torch_warned_once(monkeypatch):
    "Issue 29: building the callback under a torch newer than the tested one warns once, naming both versions"
    import fastai_repro.fastai_patches as fp
    monkeypatch.setattr(fp, 'TESTED_VERSIONS', {'fastai': fp.TESTED_VERSIONS['fastai'], 'torch': '2.0.1'})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        ReproducibleCallback(21); ReproducibleCallback(22)
    msgs = [str(x.message) for x in w if issubclass(x.category, ReproducibilityWarning)]
    assert len(msgs) == 1 and 'torch 2.0.1' in msgs[0] and f'torch {torch.__version__}' in msgs[0], msgs
