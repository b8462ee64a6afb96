"""fastai's nbs/14_callback.schedule.ipynb scenarios, on plain fastai and with `ReproducibleCallback(21)` in every
`Learner` (the `with_callback` fixture, conftest.py)."""
import math
import numpy as np, pytest, torch
from fastai.callback.schedule import LRFinder, ParamScheduler, SchedExp, SchedLin, SchedCos, combined_cos
from fastai.test_utils import synth_learner
from helpers import Tracer, close, quiet

pytestmark = pytest.mark.usefixtures('restore_globals') # in these files only: flags and figures put back after each

# mirrors nbs/14_callback.schedule.ipynb, "ParamScheduler" (a linear schedule; discriminative learning rates)
def test_param_scheduler(with_callback):
    learn = synth_learner()
    with quiet(learn): learn.fit(1, cbs=ParamScheduler({'lr': SchedLin(1e-3, 1e-2)}))
    n = len(learn.dls.train)
    assert close(learn.recorder.hps['lr'], [1e-3 + (1e-2 - 1e-3)*i/n for i in range(n)])
    learn = synth_learner(splitter=lambda m: [[m.a], [m.b]])
    sched = {'lr': combined_cos(0.5, np.array([1e-4, 1e-3]), np.array([1e-3, 1e-2]), np.array([1e-5, 1e-4]))}
    with quiet(learn): learn.fit(1, cbs=ParamScheduler(sched))
    lrs = [h['lr'] for h in learn.opt.hypers]
    assert math.isclose(lrs[1], 10*lrs[0], rel_tol=1e-6) and lrs[1] < 1e-2

# mirrors nbs/14_callback.schedule.ipynb, "fit_one_cycle" (the model gets better; the lr and momentum schedules)
def test_fit_one_cycle(with_callback):
    learn = synth_learner(lr=1e-2)
    xb, yb = next(iter(learn.dls.valid))
    init_loss = learn.loss_func(learn.model(xb), yb).item()
    with quiet(learn): learn.fit_one_cycle(2)
    assert learn.loss_func(learn.model(xb), yb).item() < init_loss
    n = 2*len(learn.dls.train)
    assert close(learn.recorder.hps['lr'], [combined_cos(0.25, 1e-2/25, 1e-2, 1e-7)(i/n) for i in range(n)])
    assert close(learn.recorder.hps['mom'], [combined_cos(0.25, 0.95, 0.85, 0.95)(i/n) for i in range(n)])

# mirrors nbs/14_callback.schedule.ipynb, "fit_flat_cos"
def test_fit_flat_cos(with_callback):
    learn = synth_learner()
    with quiet(learn): learn.fit_flat_cos(2)
    lrs, n = learn.recorder.hps['lr'], 2*len(learn.dls.train)
    assert len(lrs) == n and close(lrs[:int(0.75*n)], [learn.lr]*int(0.75*n))
    assert all(a >= b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < learn.lr/10

# mirrors nbs/14_callback.schedule.ipynb, "fit_sgdr" (cycles of 1, 2, 4 epochs, each a cosine from lr to 0)
def test_fit_sgdr(with_callback):
    learn = synth_learner()
    with quiet(learn): learn.fit_sgdr(3, 1)
    assert learn.n_epoch == 7
    iters = [k*len(learn.dls.train) for k in (0, 1, 3, 7)]
    for s, e in zip(iters, iters[1:]):
        n = e - s # the first lr of a cycle can round with the last of the previous one: check from the second
        assert close(learn.recorder.lrs[s + 1:e], [SchedCos(learn.lr, 0)(k/n) for k in range(1, n)])

# mirrors nbs/14_callback.schedule.ipynb, "fine_tune" (a frozen fit, then an unfrozen one with base_lr/2)
def test_fine_tune(with_callback):
    tracer = Tracer()
    learn = synth_learner(cbs=tracer)
    with quiet(learn): learn.fine_tune(1)
    assert tracer.events.count('before_fit') == tracer.events.count('after_fit') == 2
    lrs = learn.recorder.hps['lr']
    assert len(lrs) == len(learn.dls.train) and 0.9e-3 < max(lrs) <= 1e-3 + 1e-12
    assert len(learn.recorder.values) == 1

# mirrors nbs/14_callback.schedule.ipynb, "LRFinder" and "lr_find" (schedule, stop on divergence, no validation,
# weights and optimizer state put back)
def test_lr_find(with_callback, tmp_path):
    learn = synth_learner(path=tmp_path)
    a, b = learn.model.a.detach().clone(), learn.model.b.detach().clone()
    with quiet(learn): learn.fit(20, cbs=LRFinder(num_it=100))
    r = learn.recorder
    assert 0 < len(r.lrs) <= 100 and len(r.lrs) == len(r.losses)
    if len(r.lrs) < 100: assert r.losses[-1] > 4*min(r.losses)
    assert close(r.lrs, [SchedExp(1e-7, 10)(i/100) for i in range(len(r.lrs))])
    assert all(len(v) == 1 for v in r.values) # no validation
    assert torch.equal(learn.model.a, a) and torch.equal(learn.model.b, b)
    assert learn.opt.state_dict()['state'] == [{}, {}]
    with quiet(learn): sugg = learn.lr_find(show_plot=False)
    assert 1e-7 <= sugg.valley <= 10
    assert torch.equal(learn.model.a, a) and torch.equal(learn.model.b, b)
    assert not list((tmp_path/'models').glob('**/*.pth')) # its temporary files are gone
