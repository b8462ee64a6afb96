"""One rank of a distributed run on the CPU: the pets notebook's learner trained under `learn.distrib_ctx()`.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distrib_job.py DATA OUT MODE

MODE is `callback` (with `ReproducibleCallback(21)`, records saved per rank into OUT/records), `plain` (no callback,
an unseeded process) or `skewed` (with the callback, but rank 1 alters its model before the fit: the callback must
refuse to train). Each rank writes its final weights and training losses into OUT; a refused fit writes the error.
In `callback` mode each rank then trains a second learner with `ReproducibleCallback(21, per_rank=True)` and writes
OUT/per-rank-rank{R}.pth: the dropout masks of both learners, the second's weights and record.
"""
import os, sys
from pathlib import Path
import torch
from torch import nn
import fastai.distributed  # noqa: F401  (Learner.distrib_ctx)
from fastai.distributed import DistributedDL
from fastai.callback.core import Callback
from fastai_repro.all import ReproducibilityError, ReproducibleCallback, digits_dls, tensor_digest
from fastai_repro.keyed_data import broadcast_indices
from helpers import SIZE, make_learner, scramble

class Masks(Callback):
    "The digest of every dropout mask drawn in training: where dropout zeroed what it was given"
    def before_fit(self):
        self.digests = []
        self.hooks = [m.register_forward_hook(self.hook) for m in self.learn.model.modules()
                      if isinstance(m, nn.Dropout)]
    def hook(self, m, inp, out):
        if m.training: self.digests.append(int(tensor_digest((out == 0) & (inp[0] != 0))))
    def after_fit(self):
        for h in self.hooks: h.remove()

data, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
rank = int(os.environ['RANK'])
dls = digits_dls(data, seed=21, size=SIZE)
if mode == 'plain':
    scramble() # RandomSplitter(seed=21) fixed torch
    # fastai's DistributedDL broadcasts the shuffled indices from a CUDA tensor, which gloo cannot; the callback
    # swaps in a broadcast that works on every backend, and so must a run without it on the CPU
    DistributedDL._broadcast = lambda self, t, rank: broadcast_indices(t, rank)
learn = make_learner(dls, callback=mode != 'plain', cbs=[Masks()])
if mode != 'plain': learn.reproducible.save_to = out/'records'
if mode == 'skewed' and rank == 1:
    with torch.no_grad(): next(learn.model.parameters()).add_(1)
try:
    # gloo on the CPU: no CUDA, and SyncBatchNorm needs a GPU
    with learn.no_bar(), learn.no_logging(), learn.distrib_ctx(sync_bn=False, cpu=True): learn.fit_one_cycle(1)
except ReproducibilityError as e:
    (out/f'error-rank{rank}.txt').write_text(str(e))
    torch.distributed.barrier() # every rank has written its error before any exits (torchrun stops the rest then)
    sys.exit(3)
torch.save(learn.model.state_dict(), out/f'weights-rank{rank}.pth')
torch.save(torch.stack(learn.trace.losses).as_subclass(torch.Tensor), out/f'losses-rank{rank}.pth')
if mode == 'callback': # the same fit, each rank drawing from its own streams
    pr = make_learner(digits_dls(data, seed=21, size=SIZE), callback=False,
                      cbs=[ReproducibleCallback(21, compare_previous=False, per_rank=True), Masks()])
    with pr.no_bar(), pr.no_logging(), pr.distrib_ctx(sync_bn=False, cpu=True): pr.fit_one_cycle(1)
    torch.save(dict(shared=learn.masks.digests, per_rank=pr.masks.digests, weights=pr.model.state_dict(),
                    record=pr.reproducible.record.to_bytes()), out/f'per-rank-rank{rank}.pth')
