"""Issue 28, item 3: `learn.reproducible.explain(epoch, batch)` replays a training batch and tells why its loss is what
it is: whether it reproduces when run twice, which items (named as the data set holds them), where it turns non-finite,
mixed against full precision, and the same batch on an earlier checkpoint's state. Each part against a contrast."""
import math, warnings
import pytest, torch
from PIL import Image
from torch import nn
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision
from torch.amp import GradScaler
from fastai_repro import attribution
from fastai_repro.determinism import determinism_flags
from fastai_repro.seeding import get_rng_state
from helpers import assert_same_tensors
from test_anomaly import BS, POISON, anomalies, fit, learner

def bn_learner(tmp_path, name='ck', model=None, every=3, **kw):
    "`test_anomaly`'s regression with a BatchNorm layer (one item's NaN reaches every item's loss), checkpoints every 3"
    learn = learner(checkpoint_every=every, checkpoint_dir=tmp_path/name, **{'keep': 50, **kw})
    learn.model = model or nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
    return learn

def stopped_at(learn) -> tuple:
    "The training batch (epoch, batch) where `on_anomaly` stopped the fit"
    end = learn.reproducible.record.fits[0]['end']
    assert end['status'] == 'cancelled', end
    return end['epoch'], end['iter']

def test_a_poisoned_item_is_named_and_an_ordinary_batch_is_not(tmp_path):
    learn = bn_learner(tmp_path, on_anomaly='stop')
    fit(learn)
    a = learn.reproducible.explain(*stopped_at(learn))
    assert a.cause == 'item' and f'item {POISON}: its input is not finite' in a.verdict, a
    assert a.replay.matched and len(a.items) == BS
    assert a.items['loss'].isna().all() # BatchNorm: every item's loss in the batch is NaN...
    assert a.items.iloc[0]['index'] == POISON and not a.items.iloc[0]['input_finite'] # ...the poisoned one first
    alone = a.items.set_index('index')['alone']
    assert math.isnan(alone[POISON]) and alone.drop(POISON).map(math.isfinite).all() # on its own: it alone is NaN
    assert dict(a.evidence)['not finite first'].startswith('output of 0 (Linear); gradient of 2.bias'), a.evidence
    clean = bn_learner(tmp_path, 'clean', poison=False, on_anomaly='stop') # contrast: the same batch, no poison
    fit(clean)
    e, i = stopped_at(learn)
    b = clean.reproducible.explain(e + 1, i) # the same place an epoch later: with enough history to judge
    assert b.cause == 'ordinary' and b.verdict.startswith('ORDINARY'), b
    c = clean.reproducible.explain(e, i) # the batch itself: too few batches before it to tell a spike
    assert c.cause == 'unknown' and 'too few to tell a spike' in c.verdict, c

def test_an_item_whose_loss_alone_is_not_finite(tmp_path):
    "A target of `inf`: every input finite, and only that item's loss is not finite when it runs alone"
    class InfTarget(Callback):
        def before_batch(self):
            if self.training: self.learn.yb = (torch.where(self.x.isnan().any(1, keepdim=True), math.inf, self.y),)
            if self.training: self.learn.xb = (self.x.nan_to_num(0.),)
    learn = bn_learner(tmp_path, on_anomaly='stop', cbs=[InfTarget()])
    fit(learn)
    a = learn.reproducible.explain(*stopped_at(learn))
    assert a.cause == 'item' and 'makes the loss non-finite on its own' in a.verdict, a
    assert a.items['input_finite'].all()
    named = a.items.set_index('index')['alone']
    assert not math.isfinite(named[POISON]) and named.drop(POISON).map(math.isfinite).all()

def test_a_too_high_learning_rate_blames_no_item(tmp_path):
    learn = bn_learner(tmp_path, poison=False, bump=(1, 5), on_anomaly='stop', every=1, keep=100)
    fit(learn)
    at = stopped_at(learn)
    a = learn.reproducible.explain(*at)
    assert a.cause == 'state' and 'no item is to blame' in a.verdict, a
    assert 'ordinary against the' in dict(a.evidence)['earlier state']
    assert a.replay.matched and a.replay.loss.isfinite() # a spike, not a NaN
    b = attribution.attribute(learn, a.replay, learn.reproducible.record, candidates=[]) # no earlier state
    assert b.cause != 'state' and 'earlier state' not in dict(b.evidence), b # then nothing clears the items
    with pytest.raises(ValueError, match=r'a checkpoint at \(0, 1, 6\) \(fit, epoch, batch\), not of fit 0 before'):
        learn.reproducible.explain(*at, earlier=a.replay.checkpoint) # the batch's own state: not an earlier one

def test_an_item_that_carries_a_spike_is_named(tmp_path):
    "Item 37's target is 1000: its loss is far above the others' on any state, and without it the batch is ordinary"
    class BigTarget(Callback):
        def before_batch(self):
            if self.training:
                self.learn.yb = (torch.where(self.x.isnan().any(1, keepdim=True), 1000., self.y),)
                self.learn.xb = (self.x.nan_to_num(0.),)
    learn = bn_learner(tmp_path, on_anomaly='warn', cbs=[BigTarget()])
    fit(learn)
    later = [(e['epoch'], e['iter']) for e in anomalies(learn) if e['epoch'] == 1] # with a history to judge against
    a = learn.reproducible.explain(*later[0])
    assert a.cause == 'item' and f'item {POISON} carries the spike' in a.verdict, a
    assert a.items.iloc[0]['index'] == POISON and a.items.iloc[0]['grad_norm'] > 10 * a.items.iloc[1]['grad_norm']

class Noisy(nn.Module):
    "A layer that adds noise from its own generator, which no seeding resets: another value each run"
    def __init__(self, name=None): super().__init__(); self.g, self.name = torch.Generator().manual_seed(0), name
    def forward(self, x):
        if self.name: torch._prims_common.alert_not_deterministic(self.name) # as torch's CUDA kernels do
        return x + torch.rand(x.shape, generator=self.g)

@pytest.mark.parametrize('name', [None, 'scatter_add_cuda_kernel'])
def test_a_batch_that_differs_when_run_twice(tmp_path, name):
    learn = bn_learner(tmp_path, poison=False, model=nn.Sequential(nn.Linear(4, 8), Noisy(name), nn.Linear(8, 1)))
    with warnings.catch_warnings(): warnings.simplefilter('ignore'); fit(learn)
    a = learn.reproducible.explain(1, 4)
    assert a.cause == 'nondeterminism' and a.verdict.startswith('NOT REPRODUCIBLE'), a
    want = f'{name} has no deterministic implementation' if name else 'torch names no operation'
    assert want in a.verdict and 'but the replay departs from the record' in a.verdict, a.verdict
    plain = bn_learner(tmp_path, 'plain', poison=False) # contrast: the same without the noise
    fit(plain)
    assert plain.reproducible.explain(1, 4).cause == 'ordinary'

class CPUMixed(MixedPrecision):
    "fastai's `MixedPrecision` with the CPU's float16 autocast (fastai's own is CUDA's), and no gradient scaler"
    def before_fit(self):
        self.autocast, self.learn.scaler = torch.autocast('cpu', dtype=torch.float16), GradScaler('cpu', enabled=False)
        self.scales = []

class Huge(Callback):
    "Training batch (1, 4)'s inputs times 1e5: outputs far above float16's 65504, finite in float32"
    def before_batch(self):
        if self.training and (self.epoch, self.iter) == (1, 4): self.learn.xb = (self.x * 1e5,)

def test_mixed_precision_against_full(tmp_path):
    "A fit in float16 autocast whose batch overflows it: not finite there, finite in full precision"
    mixed = bn_learner(tmp_path, poison=False, model=nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 1)),
                       on_anomaly='stop', cbs=[CPUMixed(), Huge()])
    fit(mixed)
    assert stopped_at(mixed) == (1, 4)
    a = mixed.reproducible.explain(1, 4)
    assert a.cause == 'precision' and 'finite in full precision' in a.verdict, a
    assert a.replay.autocast == ('cpu', torch.float16) and "outside the loop" in dict(a.evidence)
    assert dict(a.evidence)['precision'].startswith('mixed (torch.float16): loss nan; full: 9.'), a.evidence
    full = bn_learner(tmp_path, 'full', poison=False, model=nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 1)),
                      on_anomaly='stop', cbs=[Huge()]) # contrast: the same fit in full precision
    fit(full)
    b = full.reproducible.explain(1, 4)
    assert b.cause != 'precision' and 'precision' not in dict(b.evidence) and math.isfinite(b.replay.loss), b

def test_the_learner_and_generators_are_left_as_found(tmp_path):
    learn = bn_learner(tmp_path, on_anomaly='stop') # stopped: no NaN in the weights, which `torch.equal` would fail
    fit(learn)
    learn.model[0].weight.grad = torch.ones(8, 4) # a gradient of the user's: kept
    state, rng, flags = {k: v.clone() for k, v in learn.model.state_dict().items()}, get_rng_state(learn.dls), \
        determinism_flags()
    modes = [m.training for m in learn.model.modules()]
    a = learn.reproducible.explain(*stopped_at(learn))
    assert a.cause == 'item'
    assert_same_tensors(state, learn.model.state_dict())
    assert str(get_rng_state(learn.dls)) == str(rng) and determinism_flags() == flags
    assert [m.training for m in learn.model.modules()] == modes and torch.equal(learn.model[0].weight.grad,
                                                                                torch.ones(8, 4))

def test_bad_input_is_refused(tmp_path):
    learn = bn_learner(tmp_path, poison=False)
    fit(learn)
    with pytest.raises(ValueError, match='item_grads=-1: the number of items'): learn.reproducible.explain(1, 4,
                                                                                                         item_grads=-1)
    with pytest.raises(ValueError, match="earlier='nope': not a checkpoint file of this run; pass one of"):
        learn.reproducible.explain(1, 4, earlier='nope')
    with pytest.raises(ValueError, match='no training batch 30 of epoch 1'): learn.reproducible.explain(1, 30)
    other = bn_learner(tmp_path, 'other', poison=False, bump=(1, 2)) # another run: its checkpoints are not this one's
    fit(other)
    theirs = sorted((tmp_path/'other').glob('*.ckpt'))[0]
    with pytest.raises(ValueError, match='not a checkpoint file of this run'):
        learn.reproducible.explain(1, 4, earlier=theirs)

def test_images_are_named_by_their_file_and_label(tmp_path):
    "The digits: one training image blank, an item transform that standardises each image divides it by 0"
    from fastai.vision.all import (DataBlock, ImageBlock, CategoryBlock, RandomSplitter, Transform, TensorImage,
                                   Learner, ConvLayer, Flatten)
    from fastai_repro.all import ReproducibleCallback, make_digits_folder
    class Standardize(Transform):
        order = 10
        def encodes(self, x:TensorImage): x = x.float(); return (x - x.mean()) / x.std()
    path = make_digits_folder(tmp_path/'digits', size=8, n=240)
    dls = DataBlock((ImageBlock, CategoryBlock), get_items=lambda p: sorted(p.glob('*.png')),
                    get_y=lambda f: f.name.split('_')[0].lower(), splitter=RandomSplitter(0.2, seed=42),
                    item_tfms=[Standardize()]).dataloaders(path, bs=16, num_workers=0)
    bad = dls.train_ds.items[50]
    Image.new('RGB', (8, 8)).save(bad)
    cb = ReproducibleCallback(21, on_anomaly='stop', checkpoint_every=4, checkpoint_dir=tmp_path/'ck', keep=50)
    net = nn.Sequential(ConvLayer(3, 8, stride=2), ConvLayer(8, 16, stride=2), nn.AdaptiveAvgPool2d(1), Flatten(),
                        nn.Linear(16, 10))
    learn = Learner(dls, net, cbs=cb)
    fit(learn)
    a = learn.reproducible.explain(*stopped_at(learn))
    top = a.items.iloc[0]
    assert a.cause == 'item' and (top['index'], top['source']) == (50, bad), a
    assert top['label'] == bad.name.split('_')[0].lower() and str(bad) in a.verdict
    assert 'Standardize' in dict(a.evidence)['item transforms']
    md = a._repr_markdown_()
    assert md.startswith(f'**{a.verdict}**') and str(bad) in md and str(a).startswith(a.verdict)
    fig = a.plot()
    assert len(fig.axes) == 2

class Root(nn.Module):
    "A linear layer plus sqrt(w·|x₁|): at an item whose x₁ is 0 the loss is finite and w's gradient is not (0/0)"
    def __init__(self): super().__init__(); self.lin, self.w = nn.Linear(4, 1), nn.Parameter(torch.ones(1))
    def forward(self, x): return self.lin(x) + torch.sqrt(self.w * x[:, 1:2].abs())

class ZeroForNaN(Callback):
    "Item 37's NaN input becomes a 0: a finite input, a finite loss"
    def before_batch(self):
        if self.training: self.learn.xb = (self.x.nan_to_num(0.),)

def test_an_item_whose_gradient_alone_is_not_finite(tmp_path):
    learn = bn_learner(tmp_path, model=Root(), on_anomaly='stop', cbs=[ZeroForNaN()])
    fit(learn)
    a = learn.reproducible.explain(*stopped_at(learn))
    assert math.isfinite(a.replay.loss) and 'gradient norm nan' in dict(a.evidence)['anomaly'], a.evidence
    assert a.cause == 'item' and f'item {POISON} makes the gradient non-finite on its own' in a.verdict, a
    assert a.items['grad_norm'].isna().all() # in the batch every item's gradient is NaN: sqrt's backward is one
    assert dict(a.evidence)['not finite first'].endswith('gradient of w (first in the backward pass)'), a.evidence

class Penalty(Callback):
    "Adds 1 to every training loss in `after_loss`: the loop's loss is not the model's and the loss function's"
    def after_loss(self):
        if self.training: self.learn.loss_grad = self.loss_grad + 1.; self.learn.loss = self.loss_grad.clone()

def test_a_callback_that_changes_the_loss_is_named(tmp_path):
    learn = bn_learner(tmp_path, poison=False, cbs=[Penalty()])
    fit(learn)
    a = learn.reproducible.explain(1, 4)
    assert a.cause == 'callbacks' and '(Penalty)' in a.verdict, a # not judged on another computation
    plain = bn_learner(tmp_path, 'plain', poison=False) # contrast: no such callback
    fit(plain)
    assert plain.reproducible.explain(1, 4).cause == 'ordinary'

def test_a_loss_function_without_reduction(tmp_path):
    "A plain function as the loss: no loss per item, and the rest of the report"
    learn = bn_learner(tmp_path, on_anomaly='stop')
    learn.loss_func = lambda p, y: ((p - y) ** 2).mean()
    fit(learn)
    a = learn.reproducible.explain(*stopped_at(learn))
    assert a.cause == 'item' and a.items['loss'].isna().all() and a.items.iloc[0]['index'] == POISON, a

def test_a_batch_the_replay_did_not_finish_is_refused(tmp_path):
    learn = bn_learner(tmp_path, poison=False)
    fit(learn)
    r = learn.reproducible.replay(1, 4)
    r.loss, r.xb = None, () # as after a callback cancelled the batch before its loss
    with pytest.raises(ValueError, match='cannot explain a batch whose loss the replay did not reach'):
        attribution.attribute(learn, r, learn.reproducible.record)

class Picky(nn.Module):
    "A model that refuses to run some items alone (x₀ > 0.5): those have no loss alone, and are not to blame for it"
    def __init__(self):
        super().__init__(); self.seq = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
    def forward(self, x):
        if len(x) == 1 and x[0, 0] > 0.5: raise ValueError('not this one alone')
        return self.seq(x)

def test_an_item_that_cannot_run_alone_is_not_blamed(tmp_path):
    class InfTarget(Callback):
        def before_batch(self):
            if self.training:
                self.learn.yb = (torch.where(self.x.isnan().any(1, keepdim=True), math.inf, self.y),)
                self.learn.xb = (self.x.nan_to_num(0.),)
    learn = bn_learner(tmp_path, model=Picky(), on_anomaly='stop', cbs=[InfTarget()])
    fit(learn)
    a = learn.reproducible.explain(*stopped_at(learn))
    refused = a.items[a.items['alone'].isna() & (a.items['index'] != POISON)]
    assert len(refused), a.items # the batch holds items the model refuses alone
    assert a.cause == 'item' and a.verdict.endswith(f'item {POISON} makes the loss non-finite on its own'), a
