"""The pets notebook's reproducibility experiments on real images (scikit-learn's digits), with and without
`ReproducibleCallback`. No `set_seed` anywhere: the callback alone must make the runs bit-identical, and each
scenario without it must differ, so that every test can fail."""
import pytest
from helpers import assert_same, same_run, train

@pytest.fixture(scope='module')
def runs(digits):
    "Runs A (own dls), A2 (own dls), R (reuses A's dls), L (own dls, lr_find first), with and without the callback"
    from fastai_repro.all import digits_dls
    from helpers import SIZE
    res = {}
    for cb in (True, False):
        dls = digits_dls(digits, seed=21, size=SIZE)
        res[cb, 'A'] = train(dls, cb)
        res[cb, 'A2'] = train(digits_dls(digits, seed=21, size=SIZE), cb)
        res[cb, 'R'] = train(dls, cb)
        res[cb, 'L'] = train(digits_dls(digits, seed=21, size=SIZE), cb, lr_find=True)
        res[cb, 'L2'] = train(digits_dls(digits, seed=21, size=SIZE), cb, lr_find=True)
    return res

def test_each_run_builds_its_own_dls(runs):
    assert_same(runs[True, 'A'], runs[True, 'A2'])
    assert not same_run(runs[False, 'A'], runs[False, 'A2'])

def test_same_dls_reused(runs):
    assert_same(runs[True, 'A'], runs[True, 'R'])
    assert not same_run(runs[False, 'A'], runs[False, 'R'])

def test_lr_find_in_one_run_only(runs):
    assert_same(runs[True, 'A2'], runs[True, 'L'])
    assert not same_run(runs[False, 'A2'], runs[False, 'L'])

def test_lr_find_suggestions_equal(runs):
    assert runs[True, 'L'].suggestion == runs[True, 'L2'].suggestion
    assert_same(runs[True, 'L'], runs[True, 'L2'])
    assert runs[False, 'L'].suggestion != runs[False, 'L2'].suggestion

def test_losses_were_recorded(runs):
    "The traces compared above are not empty: fine_tune(1) is two fits of one epoch"
    t = runs[True, 'A'].trace
    assert len(t.rows) == 2 and len(t.losses) == 2 * len(runs[True, 'A'].dls.train)

def test_different_seeds_differ(digits):
    from fastai_repro.all import digits_dls
    from helpers import SIZE
    a = train(digits_dls(digits, seed=21, size=SIZE), seed=21)
    b = train(digits_dls(digits, seed=21, size=SIZE), seed=22)
    assert not same_run(a, b)

def test_num_workers(new_dls):
    a, b = train(new_dls(num_workers=2)), train(new_dls(num_workers=2))
    assert a.dls.train.fake_l.num_workers == 2
    assert_same(a, b)
    c, d = train(new_dls(num_workers=2), callback=False), train(new_dls(num_workers=2), callback=False)
    assert not same_run(c, d)
