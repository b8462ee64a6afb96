"""One process of the world-size tests (issue 27, item 3): the pets notebook's learner with a global batch of 64, on
one process (bs=64) or two (bs=32 each, `learn.distrib_ctx()`, gloo).

    python -m torch.distributed.run --standalone --nproc_per_node 1 tests/reshard_job.py DATA OUT full
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/reshard_job.py DATA OUT full [FROM]
    python -m torch.distributed.run --standalone --nproc_per_node 1 tests/reshard_job.py DATA OUT resume FROM

`full`: `fit_one_cycle(2)` never stopped, a checkpoint every 2 training batches into OUT/ck-wW; on two processes with
FROM, then also `resume`. `resume`: `resume_from=FROM`, a checkpoint file written on the other number of processes.
Each run writes OUT/MODE-wW-rankR.pth: the final weights, the training losses, the record, and each training batch's
rows: (epoch, batch, the digest of each item's image as the model got it, its label)."""
import hashlib, os, sys
from pathlib import Path
import torch
import fastai.distributed  # noqa: F401  (Learner.distrib_ctx)
from fastai.callback.core import Callback
from fastai.vision.all import ImageDataLoaders, RandomResizedCrop, get_image_files
from fastai_repro.all import ReproducibleCallback, is_upper
from helpers import SIZE, make_learner

GLOBAL_BS = 64

class Rows(Callback):
    "Each training batch: (epoch, batch, each item's digest, each label), as the model gets them"
    order = 100
    def before_fit(self): self.got = []
    def before_batch(self):
        if not self.training: return
        x = self.xb[0].detach().cpu().contiguous()
        digests = [hashlib.blake2b(r.numpy().tobytes(), digest_size=8).hexdigest() for r in x]
        self.got.append((self.epoch, self.iter, digests, self.yb[0].tolist()))

def dls(data:Path, bs:int):
    "The digits with a random item transform (keyed per item) and no random batch transform"
    return ImageDataLoaders.from_name_func(data, get_image_files(data).sorted(), valid_pct=0.2, seed=21,
                                           label_func=is_upper, bs=bs, num_workers=0,
                                           item_tfms=RandomResizedCrop(SIZE, min_scale=0.5), batch_tfms=None)

def run(data:Path, out:Path, mode:str, start:str|None=None):
    "One `fit_one_cycle(2)`: `full` with checkpoints, or `resume` from the checkpoint file `start`"
    world = int(os.environ.get('WORLD_SIZE', 1))
    kw = (dict(checkpoint_every=2, checkpoint_dir=out/f'ck-w{world}', keep=10) if mode == 'full' else
          dict(resume_from=start))
    rows = Rows()
    learn = make_learner(dls(data, GLOBAL_BS // world), callback=False,
                         cbs=[ReproducibleCallback(21, compare_previous=False, **kw), rows])
    with learn.no_bar(), learn.no_logging():
        if world == 1: learn.fit_one_cycle(2)
        else:
            cpu = not torch.cuda.is_available() # gloo on the CPU (the tests); NCCL on GPUs (bench/gpu_check.py)
            with learn.distrib_ctx(sync_bn=False, cpu=cpu): learn.fit_one_cycle(2)
    rank = int(os.environ.get('RANK', 0))
    torch.save(dict(weights=learn.model.state_dict(), losses=[float(l) for l in learn.trace.losses], rows=rows.got,
                    record=learn.reproducible.record.to_bytes()), out/f'{mode}-w{world}-rank{rank}.pth')

if __name__ == '__main__':
    data, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    start = sys.argv[4] if len(sys.argv) > 4 else None
    if mode == 'full':
        run(data, out, 'full')
        if start: run(data, out, 'resume', start)
    else: run(data, out, mode, start)
