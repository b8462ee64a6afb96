"""`compare` is right or says what it does not know (issue 11): a setting the user can fix is named, not called
non-determinism; SAME is said only of what was compared; a setting that changed nothing recorded is no divergence."""
import copy, warnings
import pytest, torch
from fastai.callback.training import GradientClip
from fastai.losses import CrossEntropyLossFlat
from fastai.optimizer import SGD
from fastai_repro.all import ReproducibilityWarning, RunRecord, compare, digits_dls
from helpers import fit_record, make_learner

def test_thread_count_is_named(vision_dls):
    "The same training with 1 and 2 CPU threads differs (convolution gradients are summed in another order)"
    n = torch.get_num_threads()
    try:
        recs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            recs.append(fit_record(make_learner(vision_dls())))
    finally: torch.set_num_threads(n)
    c = compare(*recs)
    assert not c.same and c.first_divergence is not None, 'on this machine 1 and 2 threads must give other numbers'
    assert c.causes == ['threads'], c.report()
    assert 'intra_op: 1 vs 2' in c.details['threads'] and 'set_num_threads' in c.fixes['threads']
    assert 'nondeterminism' not in c.fixes

def test_added_callback_is_named(vision_dls):
    "Two runs that differ only by `GradientClip`: an intended change, named, and not warned about live"
    a = fit_record(make_learner(vision_dls()))
    learn = make_learner(vision_dls(), cbs=[GradientClip(0.01)])
    learn.reproducible.reference = a
    with warnings.catch_warnings():
        warnings.simplefilter('error', ReproducibilityWarning) # intended: no warning
        b = fit_record(learn)
    c = compare(a, b)
    assert c.first_divergence is not None and c.causes == ['callbacks'], c.report()
    assert 'GradientClip' in c.details['callbacks'] and 'an intended change' in c.fixes['callbacks']
    learn = make_learner(vision_dls(), cbs=[GradientClip(0.02)]) # the same callback with another setting
    assert compare(b, fit_record(learn)).causes == ['callbacks']

@pytest.mark.parametrize('change, cause', [(dict(opt_func=SGD), 'optimizer'),
                                           (dict(loss_func=CrossEntropyLossFlat(label_smoothing=0.1)), 'loss_func')])
def test_optimizer_and_loss_are_named(vision_dls, change, cause):
    a = fit_record(make_learner(vision_dls()))
    c = compare(a, fit_record(make_learner(vision_dls(), **change)))
    assert c.causes == [cause], c.report()

def test_progress_bar_is_no_difference(vision_dls):
    "A run with fastai's progress bar and one under `no_bar()` (no `ProgressCallback`) are the same run"
    a = fit_record(make_learner(vision_dls()))
    learn = make_learner(vision_dls())
    with learn.no_logging(): learn.fit(1) # with its bar
    c = compare(a, learn.reproducible.record)
    assert c.same and not c.inert, c.report()
    assert any(cb['name'].endswith('ProgressCallback') for cb in learn.reproducible.record.fits[0]['callbacks'])

def test_partial_coverage_is_not_same(vision_dls):
    "Batches recorded by one run only are said, not ignored: every=1 against every=2, rows missing, an empty record"
    a = fit_record(make_learner(vision_dls()))
    learn = make_learner(vision_dls()); learn.reproducible.every = 2
    b = fit_record(learn)
    c = compare(a, b)
    n_a, n_b = len(a.rows), len(b.rows)
    assert 0 < n_b < n_a and not c.same and c.causes == ['incomplete'], c.report()
    assert c.coverage == dict(compared=n_b, only_a=n_a - n_b, only_b=0)
    assert c.verdict().startswith(f'DIFFER: incomplete; {n_b} batches compared, {n_a - n_b} recorded by run a only')
    cut = copy.deepcopy(a); cut.rows = cut.rows[:-2] # a record with rows missing
    assert compare(a, cut).causes == ['incomplete'] and compare(cut, a).coverage['only_b'] == 2
    c = compare(a, RunRecord())
    assert c.causes == ['empty'] and not c.same and c.verdict().startswith('EMPTY'), c.report()
    assert compare(a, copy.deepcopy(a)).same

def test_workers_change_nothing_and_warn_nothing(small_digits):
    "0 and 2 workers give bit-identical batches and weights: a setting that changed nothing, no warning or strict error"
    a = fit_record(make_learner(digits_dls(small_digits, seed=21, size=16, bs=32, num_workers=0)))
    learn = make_learner(digits_dls(small_digits, seed=21, size=16, bs=32, num_workers=2))
    learn.reproducible.strict, learn.reproducible.reference = True, a
    with warnings.catch_warnings():
        warnings.simplefilter('error', ReproducibilityWarning)
        b = fit_record(learn)
    c = compare(a, b)
    assert c.same and c.causes == [] and list(c.inert) == ['dataloader'], c.report()
    assert 'num_workers: 0 vs 2' in c.inert['dataloader'] and 'changed nothing recorded: dataloader' in c.verdict()
    assert not [e for e in b.events if e['event'] == 'divergence']

def test_nondeterminism_only_when_every_fact_matches(vision_dls):
    "The facts hold each ingredient: one run's thread count changed by hand is never called non-determinism"
    a = fit_record(make_learner(vision_dls()))
    b = copy.deepcopy(a)
    b.fits[0]['env']['threads']['intra_op'] += 1
    i = b.columns.index('loss'); b.rows = [r[:i] + (r[i] + 1,) + r[i + 1:] for r in b.rows]
    assert compare(a, b).causes == ['threads']
    b.fits[0]['env']['threads'] = copy.deepcopy(a.fits[0]['env']['threads'])
    c = compare(a, b)
    assert c.causes == ['nondeterminism'] and 'every fact of the two runs matches' in c.fixes['nondeterminism']
    for k in ('env', 'threads', 'flags', 'optimizer', 'loss_func', 'callbacks', 'hyperparameters', 'dataloader'):
        assert c.components[k], k
