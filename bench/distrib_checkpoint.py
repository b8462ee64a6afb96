"""Issue 27, item 5: what a checkpoint costs in distributed training (`learn.distrib_ctx()`, 2 CPU processes, gloo).

    python bench/distrib_checkpoint.py [--pairs 3] [--every 100]

Launches itself with torchrun on 2 processes. Each pair is two `fit(1)`s of `vision_learner(resnet18)` on 1797 digits
at 16 px, 4 images a rank a batch (180 training batches a rank), one with `ReproducibleCallback(21,
checkpoint_every=EVERY, checkpoint_dir=...)` and one with `ReproducibleCallback(21)` alone, the order alternating.
It prints, from rank 0: each checkpoint's write on each rank (ms, `Checkpointer.write`: the state taken, hashed,
saved, synced, renamed), the size of a part, the fits' times and the median ratio, and the number of collectives
called from Python (`torch.distributed`'s functions; DDP's gradient reduction runs in C++ and is the same in both)
in the fits with and without checkpoints: the checkpoints must add none."""
import argparse, os, statistics, subprocess, sys, tempfile, time, warnings; warnings.simplefilter('ignore')
from pathlib import Path

DATA = Path(tempfile.gettempdir())/'fastai_repro_digits_1797_16'

def launch(a):
    "Make the data, then run this script on 2 CPU processes with torchrun"
    from fastai_repro.data import make_digits_folder
    make_digits_folder(DATA, size=16, n=1797)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', __file__,
           '--pairs', str(a.pairs), '--every', str(a.every)]
    sys.exit(subprocess.run(cmd, env={**os.environ, 'CUDA_VISIBLE_DEVICES': ''}).returncode)

def rank_main(a):
    "One rank: the pairs of fits, then the numbers gathered on rank 0"
    import torch, torch.distributed as dist
    import fastai.distributed  # noqa: F401
    from fastai.vision.learner import vision_learner
    from fastai.vision.models import resnet18
    from fastai_repro.all import ReproducibleCallback, digits_dls
    from fastai_repro import checkpoint
    rank, data = int(os.environ['RANK']), DATA
    calls = {'n': 0}
    def counted(f):
        "`f`, counting its calls"
        def g(*args, **kwargs): calls['n'] += 1; return f(*args, **kwargs)
        return g
    writes, write = [], checkpoint.Checkpointer.write
    def timed(self, *args):
        "`Checkpointer.write`, timed"
        t = time.perf_counter(); p = write(self, *args); writes.append((time.perf_counter() - t, p.stat().st_size))
        return p
    checkpoint.Checkpointer.write = timed
    def fit(every:int, i:int) -> tuple:
        "Seconds of fit `i`, and the collectives called from Python in it"
        folder = Path(tempfile.gettempdir())/f'fastai_repro_dck_{os.environ["TORCHELASTIC_RUN_ID"]}_{i}' # both ranks'
        kw = dict(checkpoint_every=every, checkpoint_dir=folder) if every else {}
        learn = vision_learner(digits_dls(data, seed=21, size=16, bs=4), resnet18, pretrained=False,
                               cbs=ReproducibleCallback(21, compare_previous=False, **kw))
        with learn.no_bar(), learn.no_logging(), learn.distrib_ctx(sync_bn=False, cpu=True):
            names = ('all_reduce', 'broadcast', 'barrier', 'all_gather', 'all_gather_object', 'broadcast_object_list',
                     'gather', 'scatter', 'reduce', 'send', 'recv')
            saved = {n: getattr(dist, n) for n in names}
            for n in names: setattr(dist, n, counted(saved[n]))
            calls['n'] = 0
            try:
                dist.barrier(); t = time.perf_counter(); learn.fit(1); dist.barrier()
                return time.perf_counter() - t, calls['n'] - 2 # less the two barriers of the timing
            finally:
                for n in names: setattr(dist, n, saved[n])
    res = {True: [], False: []}
    for i in range(a.pairs):
        for ck in ((True, False) if i % 2 == 0 else (False, True)): res[ck].append(fit(a.every if ck else 0, i))
    out = [None, None]
    dist.all_gather_object(out, dict(writes=writes, res=res))
    if rank == 0:
        for r, o in enumerate(out):
            w = [t * 1000 for t, _ in o['writes']]
            print(f'rank {r}: {len(w)} checkpoint parts written, median {statistics.median(w):.1f} ms '
                  f'(min {min(w):.1f}, max {max(w):.1f}), a part {o["writes"][0][1] / 1e6:.1f} MB')
        with_ck, without = (out[0]['res'][k] for k in (True, False))
        print('fit with checkpoints (s):', ', '.join(f'{t:.2f}' for t, _ in with_ck))
        print('fit without (s):         ', ', '.join(f'{t:.2f}' for t, _ in without))
        print(f'median ratio {statistics.median(a_ / b for (a_, _), (b, _) in zip(with_ck, without)):.3f}; '
              f'collectives from Python in a fit: with {sorted({n for _, n in with_ck})}, '
              f'without {sorted({n for _, n in without})}')
    dist.destroy_process_group() if dist.is_initialized() else None

if __name__ == '__main__':
    p = argparse.ArgumentParser()
    p.add_argument('--pairs', type=int, default=3); p.add_argument('--every', type=int, default=100)
    a = p.parse_args()
    launch(a) if 'RANK' not in os.environ else rank_main(a)
