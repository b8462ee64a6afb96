"""Per-batch cost of the callback's own path: `before_batch` + `after_batch` (no recording), the fingerprints, and the
seeding of every batch from its key (`batch_seed` + `seed_batch`: Python, NumPy, torch's CPU and started CUDA generators).

    python bench/per_batch.py
"""
import tempfile, timeit, warnings; warnings.simplefilter('ignore')
from pathlib import Path
import torch
from torch import nn
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
import fastai_repro
from fastai_repro.all import ReproducibleCallback, make_digits_folder, digits_dls, generator_fingerprints
from fastai_repro.digests import step_fingerprints
from fastai_repro.seeding import batch_seed, derive_seed, model_generators, seed_batch
p = make_digits_folder(Path(tempfile.mkdtemp())/'d', n=200)
dls = digits_dls(p, seed=21)
cb = ReproducibleCallback(21, every=0, compare_previous=False)
learn = Learner(dls, nn.Sequential(nn.Flatten(), nn.Linear(3*64*64, 2)), loss_func=CrossEntropyLossFlat(), cbs=cb)
us = lambda f, n=20000: min(timeit.repeat(f, number=n, repeat=7)) / n * 1e6
with learn:
    learn.epoch, learn.iter, learn.training, learn.loss = 0, 0, True, torch.tensor(0.)
    ev = us(lambda: (cb.before_batch(), cb.after_batch()))
fp = us(lambda: (generator_fingerprints(dls), step_fingerprints()), 2000)
base, gens, i = derive_seed(21, 'train', 0, 'epoch', 0, True), model_generators(), iter(range(10**9))
keyed = [us(lambda: seed_batch(batch_seed(base, next(i)), gens)) for _ in range(5)]
print(f'{fastai_repro.__file__}: before_batch+after_batch {ev:.2f} us, fingerprints {fp:.1f} us')
print(f'seeding a batch from its key: {sorted(keyed)[2]:.2f} us (median of 5 minima of 7 x 20000), '
      f'{len(gens)} torch generator(s), CUDA started: {torch.cuda.is_initialized()}')
