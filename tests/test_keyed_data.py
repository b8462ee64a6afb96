"""Issue 12: keyed data wherever fastai's loaders run. Each run is its own process (`workers_job.main`), so that it
can pick its start method: `fork`, `spawn` and `forkserver` with 2 workers, persistent workers, and no workers, all give
the same batches and bit-identical weights with the callback; without it, 0 and 2 workers differ. In this process:
an iterable data set, keyed by position."""
import random, warnings
import numpy as np, pytest, torch
from torch import nn
from fastai.data.core import TfmdDL, DataLoaders
from fastai.learner import Learner
from fastai.torch_core import TensorBase
from fasttransform import Pipeline
from fastai_repro.all import ReproducibleCallback, ReproducibilityWarning, isolate_loader, loader_keys, release_loader
from fastai_repro.keyed_data import KeyedBatch
from fastai_repro.runrecord import DIGEST_KEYS
import workers_job
from helpers import in_new_processes, same_tensors
from workers_job import Draws, Inputs, Items

# name: (start method, workers, persistent, callback)
RUNS = {'none': ('fork', 0, False, True), 'fork': ('fork', 2, False, True), 'spawn': ('spawn', 2, False, True),
        'forkserver': ('forkserver', 2, False, True), 'persistent': ('fork', 2, True, True),
        'plain_none': ('fork', 0, False, False), 'plain_fork': ('fork', 2, False, False)}

@pytest.fixture(scope='module')
def runs(tmp_path_factory) -> dict:
    "Every run of `RUNS`, each in a new process, two at a time: what it saw and its final weights"
    root, names = tmp_path_factory.mktemp('workers'), list(RUNS)
    for i in range(0, len(names), 2):
        in_new_processes(*[(workers_job.main, *RUNS[n], str(root/f'{n}.pt')) for n in names[i:i + 2]])
    return {name: torch.load(root/f'{name}.pt', weights_only=False) for name in names}

def same_weights(a, b) -> bool:
    "Bit-identical final weights of two runs"
    return same_tensors(a['weights'], b['weights'])

def same_inputs(a, b) -> bool:
    "The same inputs, bit for bit, at every batch of two runs"
    return len(a['inputs']) == len(b['inputs']) and all(torch.equal(x, y) for x, y in zip(a['inputs'], b['inputs']))
def digests(run) -> list:
    "The digests of every batch of a run"
    return [tuple(r[k] for k in DIGEST_KEYS) for r in run['rows']]

@pytest.mark.parametrize('name', ['fork', 'spawn', 'forkserver'])
def test_start_methods_give_the_same_run(runs, name):
    "2 workers started by `name` give the batches, batch digests and weights of no workers, bit for bit"
    ref, run = runs['none'], runs[name]
    assert len(ref['inputs']) == 2 * (5 + 2) # 2 epochs of 5 training and 2 validation batches
    assert same_inputs(ref, run) and same_weights(ref, run)
    assert digests(run) == digests(ref) and len(digests(ref)) == 14

def test_persistent_workers_give_the_same_batches(runs):
    "`persistent_workers=True` gives the batches of `False`, epoch after epoch"
    ref, run = runs['fork'], runs['persistent']
    for e in range(2): # each epoch's 7 batches
        assert all(torch.equal(x, y) for x, y in zip(ref['inputs'][7 * e:7 * e + 7], run['inputs'][7 * e:7 * e + 7]))
    assert same_weights(ref, run) and digests(run) == digests(ref)

def test_without_the_callback_workers_change_the_data(runs):
    "The contrast: without the callback, items drawing from NumPy differ between 0 and 2 workers"
    a, b = runs['plain_none'], runs['plain_fork']
    assert not same_inputs(a, b) and not same_weights(a, b)

class Stream(torch.utils.data.IterableDataset):
    "24 items of 4 features, one after the other"
    def __iter__(self): return ((TensorBase(torch.zeros(4)), i % 2) for i in range(24))

def iterable_fit(callback:bool) -> tuple:
    "2 epochs on an iterable data set: the inputs of every batch and the final weights"
    random.seed(); np.random.seed(); torch.seed() # what an unseeded process would hold
    kw = dict(bs=4, num_workers=0, after_item=Draws())
    dls = DataLoaders(TfmdDL(Stream(), n=24, **kw), TfmdDL(Stream(), n=24, **kw))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 2)) # the same start in every run
    with warnings.catch_warnings():
        warnings.simplefilter('error', ReproducibilityWarning) # recording must not stop (an iterable has no len)
        warnings.filterwarnings('ignore', message='.*initial weights were not covered')
        learn = Learner(dls, model, loss_func=nn.CrossEntropyLoss(), cbs=[Inputs()])
        if callback: learn.add_cb(ReproducibleCallback(21, compare_previous=False))
        with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-2)
    return torch.cat(learn.inputs.seen), learn.model.state_dict()

def test_iterable_data_keyed_by_position():
    "Items of an iterable data set are keyed by their position in the epoch: two runs match, two items differ"
    (a, wa), (b, wb) = iterable_fit(True), iterable_fit(True)
    assert torch.equal(a, b) and same_tensors(wa, wb)
    first = a[:24] # epoch 0's training items: all zeros before the noise, so each differs only by its own draws
    assert len({tuple(r.tolist()) for r in first}) == 24
    c, _ = iterable_fit(False)
    assert not torch.equal(a, c) # without the callback the draws come from whatever the process held

def test_a_fit_leaves_no_keying_on_the_loaders():
    "After a fit with the callback, no loader holds anything of the keying: attribute, class, method or generator"
    kw = dict(bs=4, num_workers=0, after_item=Draws(), after_batch=Draws())
    dls = DataLoaders(TfmdDL(Stream(), n=24, **kw), TfmdDL(Stream(), n=24, **kw))
    fastais = {'_DataLoader__idxs', '_n_inp', '_types'} # what fastai itself keeps: the last order, the batch's types
    before = [(set(dl.__dict__) | fastais, dict(dl.fake_l.__dict__), dl.after_batch) for dl in dls.loaders]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn = Learner(dls, nn.Linear(4, 2), loss_func=nn.CrossEntropyLoss(), cbs=ReproducibleCallback(21))
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
    for dl, (names, fake, pipe) in zip(dls.loaders, before):
        assert set(dl.__dict__) <= names and dl.fake_l.__dict__ == fake
        assert dl.after_batch is pipe and type(dl.after_batch) is Pipeline and 'do_item' not in dl.__dict__
        assert loader_keys(dl) is None

def map_fit(warm:bool) -> torch.Tensor:
    "One epoch with the callback on map-style data; `warm`: fastai's `_one_pass` ran before (as `show_batch` runs it)"
    kw = dict(bs=4, num_workers=0, after_item=Draws(), after_batch=Draws())
    dls = DataLoaders(TfmdDL(Items(24), shuffle=True, **kw), TfmdDL(Items(8), **kw))
    if warm: dls.train.n_inp # caches the loader's types; else fastai's `_split` runs `_one_pass` at the first batch
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn = Learner(dls, nn.Linear(4, 2), loss_func=nn.CrossEntropyLoss(), cbs=[Inputs(), ReproducibleCallback(21)])
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
    return torch.cat(learn.inputs.seen)

def test_fastais_one_pass_does_not_shift_the_keys():
    "A batch fastai makes outside the pass (`_one_pass`, when the loader's types are not cached) shifts no later key"
    assert torch.equal(map_fit(warm=False), map_fit(warm=True))

def test_release_gives_back_what_others_set():
    "A generator set before the keying comes back; a pipeline set during it is kept, and keyed from the next epoch"
    dl = TfmdDL(Items(8), bs=4, num_workers=0)
    g = torch.Generator().manual_seed(1)
    dl.fake_l.generator = g
    isolate_loader(dl, (21, 0, 0, 0)); list(dl); release_loader(dl)
    assert dl.fake_l.generator is g
    isolate_loader(dl, (21, 0, 0, 0))
    dl.after_batch = mine = Pipeline([])
    isolate_loader(dl, (21, 0, 1, 0))
    assert type(dl.after_batch) is KeyedBatch
    release_loader(dl)
    assert dl.after_batch is mine and dl.fake_l.generator is g and loader_keys(dl) is None
