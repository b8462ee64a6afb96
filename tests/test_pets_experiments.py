"""The pets notebook's experiments that `nbs/11_pets_replayed.ipynb` does not show, on real images (scikit-learn's
digits): the same `lr_find` in two runs suggests the same learning rate, and 2 workers give bit-identical runs. The
six experiments themselves (reused DataLoaders, `lr_find` in one run, `set_seed` variants), with and without the
callback, are that notebook's tests, run by `fastai-repro nbcheck` in `make test`. No `set_seed` anywhere here: the
callback alone must make the runs bit-identical, and each scenario without it must differ, so that every test can
fail."""
from helpers import assert_same, same_run, train

def test_lr_find_suggestions_equal(new_dls):
    "Two runs with an `lr_find` first: the same suggestion and the same run with the callback; without it, other runs"
    a, b = train(new_dls(), lr_find=True), train(new_dls(), lr_find=True)
    assert a.suggestion == b.suggestion
    assert_same(a, b)
    c, d = train(new_dls(), callback=False, lr_find=True), train(new_dls(), callback=False, lr_find=True)
    assert not same_run(c, d) # the suggestions may coincide (24 steps: the valley can be the smallest rate), runs not

def test_losses_were_recorded(new_dls):
    "The traces `same_run` compares are not empty: fine_tune(1) is two fits of one epoch"
    a = train(new_dls())
    assert len(a.trace.rows) == 2 and len(a.trace.losses) == 2 * len(a.dls.train)

def test_num_workers(new_dls):
    a, b = train(new_dls(num_workers=2)), train(new_dls(num_workers=2))
    assert a.dls.train.fake_l.num_workers == 2
    assert_same(a, b)
    c, d = train(new_dls(num_workers=2), callback=False), train(new_dls(num_workers=2), callback=False)
    assert not same_run(c, d)
