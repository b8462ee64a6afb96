"""One process of the worker tests: `main(METHOD, WORKERS, PERSISTENT, CALLBACK, OUT)`, which the tests run in a process
of their own (`helpers.in_new_processes`); by hand:
`python workers_job.py METHOD WORKERS PERSISTENT CALLBACK OUT [EPOCHS]`.

Trains a small model for EPOCHS epochs (default 2) on a picklable synthetic data set whose item and batch transforms
draw from Python's, NumPy's and torch's global generators, with `num_workers=WORKERS` started by METHOD (`fork`,
`spawn` or `forkserver`), persistent or not. Writes OUT (a `torch.save`d dict): the final weights, every batch's
inputs, and the record's rows."""
import random, sys, warnings
import numpy as np, torch
from torch import nn
from fastai.data.core import TfmdDL, DataLoaders
from fastai.callback.core import Callback
from fastai.learner import Learner
from fastai.torch_core import TensorBase
from fasttransform import Transform
from fastai_repro.all import ReproducibleCallback

class Draws(Transform):
    "An item or batch transform that draws from Python's, NumPy's and torch's global generators"
    def encodes(self, x:TensorBase): return x + random.random() + float(np.random.rand()) + torch.rand(x.shape)

class Items(torch.utils.data.Dataset):
    "`n` items of 4 features, indexed; the class is importable, so it pickles under spawn"
    def __init__(self, n:int=40): self.n = n
    def __len__(self): return self.n
    def __getitem__(self, i): return TensorBase(torch.arange(4.) + i), i % 2

class Inputs(Callback):
    "Keeps every batch's inputs"
    def __init__(self): self.seen = []
    def before_batch(self): self.seen.append(self.xb[0].clone())

def loaders(workers:int, persistent:bool) -> DataLoaders:
    "Train and valid `TfmdDL`s with random item and batch transforms; the training one drops its last 4 items"
    kw = dict(bs=8, num_workers=workers, persistent_workers=persistent, after_item=Draws(), after_batch=Draws())
    return DataLoaders(TfmdDL(Items(44), shuffle=True, drop_last=True, **kw), TfmdDL(Items(16), **kw))

def main(method, workers, persistent, callback, out, epochs=2):
    "Train with `workers` workers started by `method`, with `ReproducibleCallback(21)` or not; save what was seen"
    torch.multiprocessing.set_start_method(method, force=True)
    # forkserver workers fork from a server that imported these once (as a user would set it up), not each on its own
    if method == 'forkserver': torch.multiprocessing.set_forkserver_preload(['fastai_repro.all', 'workers_job'])
    torch.manual_seed(0)
    dls = loaders(workers, persistent)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    cbs = [ReproducibleCallback(21, compare_previous=False)] if callback else []
    with warnings.catch_warnings():
        warnings.simplefilter('ignore') # the model was built before the callback: both runs build it alike
        learn = Learner(dls, model, loss_func=nn.CrossEntropyLoss(), cbs=cbs)
    learn.add_cb(inputs := Inputs())
    with learn.no_bar(), learn.no_logging(): learn.fit(epochs, 1e-2)
    rec = learn.reproducible.record if callback else None
    rows = [dict(zip(rec.columns, r)) for r in rec.rows] if callback else []
    torch.save(dict(weights=learn.model.state_dict(), inputs=inputs.seen, rows=rows), out)

if __name__ == '__main__':
    a = sys.argv
    main(a[1], int(a[2]), a[3] == '1', a[4] == '1', a[5], int(a[6]) if len(a) > 6 else 2)
