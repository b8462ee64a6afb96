"""Issue 28, items 2 and 4: `learn.reproducible.replay(epoch, batch)` runs a training batch again from the latest
checkpoint before it, checks every fingerprint on the way against the record, keeps the batch, and gives the learner
back as it was; what it cannot do it says, naming what is missing."""
import random, os
import pytest, torch
from torch import nn
from helpers import assert_same_tensors, make_learner, quiet, quiet_fit
from test_anomaly import BS, fit, learner
from fastai_repro.data import digits_dls
from fastai_repro.checkpoint import checkpoint_position

def trained(tmp_path, every=3, **kw):
    "The regression of `test_anomaly` (item 37 a NaN input unless `poison=False`), 2 epochs, a checkpoint every 3"
    learn = learner(checkpoint_every=every, checkpoint_dir=tmp_path/'ck', keep=50, **kw)
    fit(learn)
    return learn

def test_a_replayed_batch_matches_the_record(tmp_path):
    learn = trained(tmp_path, poison=False)
    rec = learn.reproducible.record
    before, n_rows, n_ev = {k: v.clone() for k, v in learn.model.state_dict().items()}, len(rec), len(rec.events)
    learn.model.weight.grad, learn.model.bias.grad = torch.full_like(learn.model.weight, 7.), None # the user's: kept
    loss_grad = learn.loss_grad
    epoch, batch = random.Random(os.urandom(8)).choice([(e, b) for e in (0, 1) for b in range(20) if e or b >= 3])
    r = learn.reproducible.replay(epoch, batch)
    assert r.matched, r.verdict()
    assert (r.fit, r.epoch, r.batch) == (0, epoch, batch)
    # the checkpoints: before each training batch whose number in the fit is a multiple of 3, and after each epoch's
    have = [(e, b) for e in (0, 1) for b in range(1, 20) if (20 * e + b) % 3 == 0] + [(0, 20), (1, 20)]
    start = max(p for p in have if p <= (epoch, batch))
    assert checkpoint_position(r.checkpoint) == (0, *start)
    valid = 2 if start[0] < epoch else 0 # the validation of the epoch the checkpoint ended: 16 items, 2 batches
    assert r.ran == (batch - start[1] if start[0] == epoch else 20 - start[1] + valid + batch), (start, r.ran)
    row = rec.batches.query(f"fit == 0 and phase == 'train' and epoch == {epoch} and iter == {batch}").iloc[0]
    assert float(r.loss) == row['loss'] # the loss it computed is the one recorded, bit for bit
    assert r.xb[0].shape == (BS, 4)
    assert r.verdict().startswith(f'REPLAYED fit 0, epoch {epoch}, training batch {batch}')
    assert_same_tensors(before, learn.model.state_dict()) # the learner is given back
    assert torch.equal(learn.model.weight.grad, torch.full_like(learn.model.weight, 7.))
    assert learn.model.bias.grad is None and learn.loss_grad is loss_grad
    assert (len(learn.reproducible.record), len(learn.reproducible.record.events)) == (n_rows, n_ev) # and the record
    assert learn.reproducible.record is rec
    r.restore(learn) # the state just before the batch, on request
    assert not all(torch.equal(before[k], v) for k, v in learn.model.state_dict().items())

def test_the_poisoned_batch_holds_the_nan_item(tmp_path):
    learn = trained(tmp_path, on_anomaly='stop')
    end = learn.reproducible.record.fits[0]['end']
    r = learn.reproducible.replay(end['epoch'], end['iter'])
    assert r.matched and r.loss.isnan(), r.verdict()
    assert r.xb[0].isnan().any(dim=1).sum() == 1 # one item of the batch: item 37's NaN input

def test_a_batch_where_a_fit_stopped_for_a_spike_matches(tmp_path):
    "`on_anomaly='stop'` ends the fit after the batch's loss, before its row has one: there is no loss to compare"
    from test_anomaly import Bump
    learn = trained(tmp_path, poison=False, on_anomaly='stop', cbs=[Bump((1, 5))])
    end = learn.reproducible.record.fits[0]['end']
    assert end['status'] == 'cancelled' and end['reason'].startswith('anomaly: the loss'), end
    r = learn.reproducible.replay(end['epoch'], end['iter'])
    assert r.matched and torch.isfinite(r.loss), r.verdict() # a finite spike, not a NaN like the record's missing loss

def test_a_replay_that_departs_from_the_record_says_where(tmp_path):
    "Contrast: a forward pass that draws a random number after training changes the generators it leaves"
    learn = trained(tmp_path, poison=False)
    forward = learn.model.forward
    learn.model.forward = lambda x: (torch.rand(1), forward(x))[1]
    r = learn.reproducible.replay(1, 11) # from the checkpoint before batch 10: batch 10 is replayed on the way
    assert not r.matched and r.differs == 'fit 0, epoch 1, train batch 10 differs from the record (rng_torch_step)', r
    assert r.verdict().startswith('REPLAYED fit 0, epoch 1, training batch 11')
    assert 'NOT the recorded run' in r.verdict()

def test_what_is_missing_is_named(tmp_path):
    learn = trained(tmp_path, poison=False, every=25)
    raises = lambda match: pytest.raises(ValueError, match=match)
    with raises('no training batch 3 of epoch 5 in fit 0 .it has epochs 0 to 1, batches 0 to 19'):
        learn.reproducible.replay(5, 3)
    with raises(r'no checkpoint of this run at or before fit 0, epoch 0, batch 4 .*its first is at \(0, 0, 20\)'):
        learn.reproducible.replay(0, 4)
    with raises('fit=3, but the record holds fits 0 to 0'): learn.reproducible.replay(0, 4, fit=3)
    plain = learner(poison=False); fit(plain)
    with pytest.raises(ValueError, match="replay needs the run's checkpoints: train with"):
        plain.reproducible.replay(0, 4)
    learn.model = nn.Sequential(nn.Linear(4, 1)) # another model than the checkpoint's
    with pytest.raises(ValueError, match='is from another model'): learn.reproducible.replay(1, 10)

def test_a_batch_of_fine_tune(digits, tmp_path):
    "Two fits from one call: fit 0 (body frozen) and fit 1; a replay of fit 0 ends the call there, and gives it back"
    from fastai_repro.all import ReproducibleCallback
    cb = ReproducibleCallback(21, compare_previous=False, checkpoint_every=2, checkpoint_dir=tmp_path/'ck', keep=50)
    learn = make_learner(digits_dls(digits, seed=21, size=16), callback=False, cbs=[cb])
    with quiet(learn): learn.fine_tune(1)
    trains, before = [p.requires_grad for p in learn.model.parameters()], learn.model.state_dict()
    before = {k: v.clone() for k, v in before.items()}
    for f, (e, b) in ((0, (0, 5)), (1, (0, 3))):
        r = learn.reproducible.replay(e, b, fit=f)
        assert r.matched and r.fit == f, r.verdict()
    assert [p.requires_grad for p in learn.model.parameters()] == trains # unfrozen, as fine_tune left it
    assert_same_tensors(before, learn.model.state_dict())

def test_the_state_before_a_batch_of_fit_one_cycle_can_be_put_back(tmp_path):
    "`fit_one_cycle` adds its scheduler for the fit alone: the state before the batch holds it, the learner after not"
    learn = learner(poison=False, checkpoint_every=3, checkpoint_dir=tmp_path/'ck', keep=50)
    quiet_fit(learn, 2, 0.05, how="fit_one_cycle")
    r = learn.reproducible.replay(1, 4)
    assert r.matched, r.verdict()
    r.restore(learn) # the weights and the optimizer's state just before the batch; the scheduler's is the fit's own
    from fastai_repro.replay import learner_snapshot, put_learner
    learn.model.weight.grad = torch.ones_like(learn.model.weight)
    snap = learner_snapshot(learn)
    put_learner(learn, snap); learn.model.weight.grad.add_(1.) # a step from there: the snapshot must not change
    put_learner(learn, snap)
    assert torch.equal(learn.model.weight.grad, torch.ones_like(learn.model.weight))
    row = learn.reproducible.record.batches.query("phase == 'train' and epoch == 1 and iter == 4").iloc[0]
    assert float(learn.loss_func(learn.model(*r.xb), *r.yb)) == row['loss']

def test_the_items_of_a_batch_are_unknown_where_fastai_keeps_no_order():
    "A `SortedDL` (fastai's text loaders) keeps an iterator, not a list: no items named, and no error"
    from types import SimpleNamespace
    from fastai_repro.replay import batch_items
    class DL(SimpleNamespace): pass
    assert batch_items(DL(_DataLoader__idxs=iter(range(10)), bs=2), 1) == (None, None)
    assert batch_items(DL(_DataLoader__idxs=list(range(10)), bs=4), 1)[0] == [4, 5, 6, 7]
