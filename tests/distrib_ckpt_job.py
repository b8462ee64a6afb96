"""One rank of the distributed resume tests (issue 27): the pets notebook's learner under `learn.distrib_ctx()`.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distrib_ckpt_job.py DATA OUT MODE [AT]

MODE is `full` (the whole run, no checkpoint, twice: with `ReproducibleCallback(21)` and with `per_rank=True`),
`killed-shared` or `killed-per_rank` (a checkpoint before every training batch into OUT/ck-VARIANT; at training batch
AT = `epoch,batch` rank 1 waits until rank 0 has written its part of the checkpoint due there, then kills itself
with SIGKILL before writing its own: that checkpoint is incomplete, and torchrun stops rank 0) or `resume-shared`,
`resume-per_rank` (`resume_from=OUT/ck-VARIANT`, to the end). `full` and `resume-*` write OUT/MODE-VARIANT-rankR.pth:
the final weights, the training losses, the Recorder's values, the record."""
import os, signal, sys, time
from pathlib import Path
import torch
import fastai.distributed  # noqa: F401  (Learner.distrib_ctx)
from fastai.callback.core import Callback
from fastai_repro.all import ReproducibleCallback, digits_dls
from fastai_repro.checkpoint import checkpoint_name
from helpers import SIZE, make_learner

class KillAt(Callback):
    """On rank 1, at training batch `at` (epoch, batch; `None`: never): wait for rank 0's part of its checkpoint, then
    SIGKILL. In every run, killed or not: a resume is refused when the callbacks differ from the checkpoint's run's"""
    order, at, ck = -100, None, None # before the callback writes its part; `at`, `ck`: a switch, not settings
    def before_batch(self):
        if not self.training or int(os.environ['RANK']) != 1 or (self.epoch, self.iter) != KillAt.at: return
        deadline = time.time() + 60
        while time.time() < deadline and not list(KillAt.ck.glob(f'*-epoch{self.epoch:04d}-batch{self.iter:06d}'
                                                                 f'-rank0of2.ckpt')): time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)

def run(data:Path, out:Path, variant:str, mode:str, at=None):
    "One run of `fit_one_cycle(2)` of `variant` (`shared` or `per_rank`) in `mode` (full, killed or resume)"
    ck = out/f'ck-{variant}'
    kw = dict(checkpoint_every=1, checkpoint_dir=ck) if mode == 'killed' else {}
    if mode == 'resume': kw = dict(resume_from=ck)
    cb = ReproducibleCallback(21, compare_previous=False, per_rank=variant == 'per_rank', **kw)
    KillAt.at, KillAt.ck = at, ck
    learn = make_learner(digits_dls(data, seed=21, size=SIZE), callback=False, cbs=[cb, KillAt()])
    cpu = not torch.cuda.is_available() # gloo on the CPU (the tests); NCCL on GPUs (bench/gpu_check.py)
    with learn.no_bar(), learn.no_logging(), learn.distrib_ctx(sync_bn=False, cpu=cpu): learn.fit_one_cycle(2)
    rank = int(os.environ['RANK'])
    torch.save(dict(weights=learn.model.state_dict(), losses=[float(l) for l in learn.trace.losses],
                    values=[list(map(float, v)) for v in learn.recorder.values],
                    record=learn.reproducible.record.to_bytes()), out/f'{mode}-{variant}-rank{rank}.pth')

if __name__ == '__main__':
    data, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    at = tuple(map(int, sys.argv[4].split(','))) if len(sys.argv) > 4 else None
    if mode == 'full':
        for variant in ('shared', 'per_rank'): run(data, out, variant, 'full')
    else:
        kind, variant = mode.split('-')
        run(data, out, variant, kind, at)
