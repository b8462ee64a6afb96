"""Why two runs differ, one real scenario per rule on the digits images: the cause code and the first divergence."""
import os, shutil, subprocess, sys, warnings
from contextlib import contextmanager, nullcontext
import numpy as np, pytest, torch
from torch import nn
from PIL import Image
from fastai.callback.core import Callback
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.vision.augment import RandomResizedCrop, aug_transforms
from fastai.vision.data import ImageDataLoaders
from fastai_repro.all import (ReproducibleCallback, ReproducibilityError, ReproducibilityWarning, RunRecord, compare,
                              digits_dls, is_upper, plot_divergence)
from fastai_repro.cli import main
from helpers import SIZE, fit_record, fit_x_fit, make_learner

class StrayDraw(Callback):
    "While `StrayDraw.on`, draws one number from torch's generator at training batch 5 of epoch 0: a hidden draw"
    on = False # a switch outside every setting: the facts of the runs are the same, as for a stray draw in user code
    def before_batch(self):
        if StrayDraw.on and self.training and self.epoch == 0 and self.iter == 5: torch.rand(1)

@contextmanager
def stray_draw():
    "Turn on the hidden draw of the `StrayDraw` every `quiet_learner` holds"
    StrayDraw.on = True
    try: yield
    finally: StrayDraw.on = False

def quiet_learner(dls, **kw):
    "The pets notebook's learner, with a `StrayDraw` (off) in every run, so that runs differ only by the draw"
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', ReproducibilityWarning)
        return make_learner(dls, cbs=[StrayDraw()], **kw)

def test_unseeded_split(digits):
    "Two sessions that start from different global states build their DataLoaders without a seed"
    recs = []
    for s in (1, 2):
        torch.manual_seed(s)
        recs.append(fit_record(quiet_learner(digits_dls(digits, seed=None, size=SIZE))))
    c = compare(*recs)
    assert c.causes == ['split'] and 'seed=' in c.fixes['split']
    assert (c.first_divergence.fit, c.first_divergence.iter) == (0, 0) and 'inputs' in c.first_divergence.components

def test_callback_added_after_model(new_dls):
    recs = []
    for s in (1, 2):
        dls = new_dls() # its RandomSplitter(seed=21) reseeds torch globally, so the draws must come after it
        torch.manual_seed(s) # two sessions: the model is initialized from whatever state the generators are in
        learn = make_learner(dls, callback=False)
        learn.add_cb(ReproducibleCallback(21))
        with pytest.warns(ReproducibilityWarning, match='attached after the model was built'):
            recs.append(fit_record(learn))
    c = compare(*recs)
    assert c.causes == ['init_weights'] and 'cbs=ReproducibleCallback' in c.fixes['init_weights']
    assert (c.first_divergence.iter, c.first_divergence.components) == (0, ['loss'])
    assert recs[0].events[0]['event'] == 'attached_after_model'

def test_extra_draw_at_batch_5(new_dls):
    a = fit_record(quiet_learner(new_dls()))
    learn = quiet_learner(new_dls())
    with warnings.catch_warnings(), stray_draw():
        warnings.simplefilter('ignore', ReproducibilityWarning)
        b = fit_record(learn)
    c = compare(a, b)
    fd = c.first_divergence
    assert c.causes == ['rng'] and (fd.fit, fd.epoch, fd.phase, fd.iter) == (0, 0, 'train', 5)
    assert fd.components[0] == 'rng_torch_step' and 'out of order' in c.fixes['rng']
    # every batch draws from its own key: the batches after the last training batch (5), those of the validation,
    # drew exactly what they drew without the extra draw (before batches were keyed, torch's stream stayed shifted)
    rng = [k for k in a.columns if k.startswith('rng_')]
    after = lambda r: r.batches.query("phase == 'valid'")[rng].reset_index(drop=True)
    assert len(after(a)) > 0 and after(a).equals(after(b))

def cropped(digits):
    "The digits' `DataLoaders` with another crop than `new_dls`'s (`min_scale=0.5`)"
    return ImageDataLoaders.from_name_func(digits, sorted(digits.glob('*.png')), valid_pct=0.2, seed=21,
                                           label_func=is_upper, item_tfms=RandomResizedCrop(SIZE, min_scale=0.5),
                                           batch_tfms=aug_transforms(do_flip=False))

def test_transform_changed(digits, new_dls):
    a = fit_record(quiet_learner(new_dls()))
    c = compare(a, fit_record(quiet_learner(cropped(digits))))
    assert c.causes == ['dataloader'] and 'min_scale' in c.details['dataloader']
    assert c.first_divergence.iter == 0 and 'inputs' in c.first_divergence.components

def two_fits(dls, between=None):
    "Two fits of one learner, as `fine_tune` makes; `between(learn)` runs between them"
    return fit_x_fit(quiet_learner(dls), between).reproducible.record

def test_a_second_fit_starts_where_the_first_ended(digits, new_dls):
    "The second fit's other initial weights follow from the first fit's change: not a cause of their own"
    a = two_fits(new_dls())
    c = compare(a, two_fits(cropped(digits)))
    assert c.causes == ['dataloader'], c.causes
    def reset_head(learn): # the contrast: a run that changes the weights between its fits
        "Give the last layer new weights, drawn from a forked generator"
        with torch.random.fork_rng(): learn.model[-1][-1].reset_parameters()
    c = compare(a, two_fits(new_dls(), reset_head))
    assert c.causes == ['init_weights'] and 'fit 1' in c.details['init_weights'], (c.causes, c.details)

def test_pixels_changed_same_files(digits, tmp_path):
    "Same file names, other pixels: the item set and the split match, the inputs do not"
    other = tmp_path/'digits'
    shutil.copytree(digits, other)
    for f in other.glob('*.png'):
        a = np.array(Image.open(f)); Image.fromarray(255 - a).save(f)
    a = fit_record(quiet_learner(digits_dls(digits, size=SIZE)))
    c = compare(a, fit_record(quiet_learner(digits_dls(other, size=SIZE))))
    assert c.causes == ['data'] and c.first_divergence.iter == 0 and c.first_divergence.components[0] == 'inputs'

class Noise(nn.Module):
    "Adds noise from os.urandom: no generator that fastai or torch seeds"
    def forward(self, x):
        n = np.frombuffer(os.urandom(4 * x.numel()), dtype=np.uint32).astype(np.float32) / 2**32
        return x + 0.1 * torch.from_numpy(n).view_as(x) # large enough that the first loss already differs

def small_model():
    "A small image classifier with a `Noise` layer: a draw from no generator that anyone seeds"
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), Noise(), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 2))

def test_nondeterminism(new_dls):
    def run():
        "A fit of `small_model` with the callback built before it"
        cb = ReproducibleCallback(21)
        return fit_record(Learner(new_dls(), small_model(), loss_func=CrossEntropyLossFlat(), cbs=cb))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', ReproducibilityWarning)
        c = compare(run(), run())
    assert c.causes == ['nondeterminism'] and 'every determinism flag was on' in c.fixes['nondeterminism']
    assert (c.first_divergence.iter, c.first_divergence.components) == (0, ['loss'])

def test_hyperparameter_change(new_dls):
    a = fit_record(quiet_learner(new_dls()), lr=1e-3)
    c = compare(a, fit_record(quiet_learner(new_dls()), lr=3e-3))
    assert c.causes == ['hyperparameters'] and 'call[0].args.lr: 0.001 vs 0.003' in c.details['hyperparameters']
    assert (c.first_divergence.iter, c.first_divergence.components) == (1, ['loss'])

@pytest.fixture(scope='module')
def saved(digits, tmp_path_factory):
    "A saved run of the digits"
    learn = quiet_learner(digits_dls(digits, seed=21, size=SIZE))
    learn.reproducible.save_to = tmp_path_factory.mktemp('runs')
    fit_record(learn)
    return learn.reproducible.saved_as

def test_other_torch_version(saved, tmp_path):
    rec = RunRecord.load(saved)
    rec.fits[0]['env']['torch'], rec.fits[0]['final_weights'] = '2.13.0', 1 # another torch, other weights at the end
    c = compare(saved, rec.save(tmp_path/'other.jsonl'))
    assert c.causes == ['env'] and f'torch: {torch.__version__} vs 2.13.0' in c.details['env']
    assert 'not expected' in c.fixes['env']
    assert c.first_divergence is None

def test_live_reference_warns_once_and_strict_stops(saved, new_dls):
    learn = quiet_learner(new_dls())
    learn.reproducible.reference = RunRecord.load(saved)
    first = r'differs from the reference run \(first at fit 0, epoch 0, train batch 5'
    with stray_draw(), pytest.warns(ReproducibilityWarning, match=first) as ws:
        fit_record(learn)
    assert sum('differs from the reference' in str(w.message) for w in ws) == 1
    assert [e['causes'] for e in learn.reproducible.record.events if e['event'] == 'divergence'] == [['rng']]
    learn = quiet_learner(new_dls())
    learn.reproducible.strict, learn.reproducible.reference = True, RunRecord.load(saved)
    with stray_draw(), pytest.raises(ReproducibilityError, match='train batch 5'): fit_record(learn)
    assert len(learn.reproducible.record.rows) == 6 # stopped there: batches 0..5

def test_rerun_of_the_same_experiment_is_compared(new_dls):
    "The same code run again (a loop here; a notebook cell run twice) is compared with its previous run"
    def run(extra, compare_previous=True):
        "The same code run again: a fit with the stray draw (`extra`) or without"
        learn = quiet_learner(new_dls(), compare_previous=compare_previous)
        with stray_draw() if extra else nullcontext(): return fit_record(learn)
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        for extra in (False, True): run(extra)
    assert [w for w in ws if issubclass(w.category, ReproducibilityWarning) and 'reference run' in str(w.message)]
    with warnings.catch_warnings():
        warnings.simplefilter('error', ReproducibilityWarning)
        for extra in (False, True): run(extra, compare_previous=False)

def test_cli_diff_exit_codes(saved, tmp_path, capsys):
    assert main(['diff', str(saved), str(saved)]) == 0
    assert capsys.readouterr().out.startswith('SAME')
    rec = RunRecord.load(saved)
    rec.fits[0].update(seed=22, init_weights=1) # another seed: other initial weights
    other = rec.save(tmp_path/'b.jsonl')
    lines = saved.read_text().splitlines(True)
    assert main(['diff', str(saved), str(other)]) == 1
    assert capsys.readouterr().out.startswith('DIFFER: seed')
    (tmp_path/'bad.jsonl').write_text(''.join(lines[:-1]))
    for bad in ('/no/such/file.jsonl', str(tmp_path/'bad.jsonl')):
        r = subprocess.run([sys.executable, '-m', 'fastai_repro', 'diff', str(saved), bad], capture_output=True,
                           text=True)
        assert r.returncode == 2 and r.stdout == '' and 'Traceback' not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1

def test_plot_marks_first_divergence(saved, new_dls):
    learn = quiet_learner(new_dls())
    with warnings.catch_warnings(), stray_draw():
        warnings.simplefilter('ignore', ReproducibilityWarning)
        b = fit_record(learn)
    fig = plot_divergence(saved, b)
    assert 'train batch 5' in fig.axes[0].get_title()
