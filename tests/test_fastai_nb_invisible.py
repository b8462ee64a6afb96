"""The callback is invisible outside training fits (beside fastai's notebook scenarios, test_fastai_nb_*.py).

The tests build the learner with `ReproducibleCallback(21, compare_previous=False)` in the call that builds it, take
each inference-like entry point X (`get_preds`, `predict`, `validate`, `tta`, `show_results`, `summary`,
`with learn:`, `learn(['before_fit', 'before_epoch'])` fired by hand as the 13a notebook does before a fit,
`lr_find`) and check
- that X leaves Python's, NumPy's and torch's generators, every loader's `rng`, `learn.reproducible.n_fit` and the
  determinism flags as they were;
- that `fit; X; fit` ends with weights bit-identical to `fit; fit`.
"""
from functools import partial
import matplotlib.pyplot as plt
import numpy as np, pytest, torch
from fastcore.test import equals
from fastai.data.all import Datasets, Transform, noop
from fastai.learner import Learner
from fastai.losses import MSELossFlat
from fastai.optimizer import SGD
from fastai.test_utils import RegModel
from fastai_repro.all import ReproducibleCallback, determinism_flags, get_rng_state, weights_equal
from helpers import fit_x_fit, quiet, vision_learner_on

pytestmark = pytest.mark.usefixtures('restore_globals') # in these files only: flags and figures put back after each

class Line(Transform):
    "The synthetic target of an input: 2x + 3"
    def encodes(self, x): return 2*x + 3

def line_dls(n_train=160, n_valid=32, bs=16):
    "Regression data as a fastai `Datasets` (so `predict`, `tta` and `summary` work): random x, target 2x + 3"
    items = list(torch.randn(n_train + n_valid, 1).numpy()) # NumPy arrays: what `test_dl` checks new items against
    splits = [list(range(n_train)), list(range(n_train, n_train + n_valid))]
    return Datasets(items, tfms=[[noop], [Line()]], splits=splits).dataloaders(bs=bs)

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

def test_fit_x_fit_sees_a_skipped_fit():
    "The comparison used below can fail: a second fit run as fit 2 instead of fit 1 ends elsewhere"
    def skip(l):
        "Count one more training fit than there was"
        l.reproducible.n_fit += 1
    assert not weights_equal(fit_x_fit(repro_synth(), skip).model, fit_x_fit(repro_synth()).model)

@pytest.mark.parametrize('entry', list(ENTRIES))
def test_fit_x_fit_equals_fit_fit(entry, request):
    "The entry point between two training fits changes nothing in the second one"
    kind, call = ENTRIES[entry]
    ref = fit_x_fit(build(kind, request))
    got = fit_x_fit(build(kind, request), call)
    assert weights_equal(got.model, ref.model)
