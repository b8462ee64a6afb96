"""What a replay costs (`learn.reproducible.replay(epoch, batch)`, issue 28) as a function of how many batches lie
between the checkpoint it starts from and the batch, against the training time of as many batches.

    python bench/replay_cost.py

`cnn_learner(resnet18)` on 384 digits at 32 px, bs=8 (48 training batches an epoch), `fit(2)` with a checkpoint every
40 training batches: one before batch 32 of epoch 1. The batches 32 + d of epoch 1 are replayed, d = 0, 4, 8, 15, three
times each (median)."""
import os, platform, statistics, tempfile, time, warnings; warnings.simplefilter('ignore')
from pathlib import Path
import torch
from fastai.vision.all import cnn_learner, resnet18
from fastai_repro.all import ReproducibleCallback, make_digits_folder, digits_dls

def trained():
    "The run replayed: resnet18 on the digits, `fit(2)`, a checkpoint every 40 training batches; it says its time"
    tmp = Path(tempfile.mkdtemp())
    data = make_digits_folder(tmp/'d', size=32, n=480)
    cb = ReproducibleCallback(21, compare_previous=False, checkpoint_every=40, checkpoint_dir=tmp/'ck', keep=10)
    learn = cnn_learner(digits_dls(data, seed=21, size=32, bs=8), resnet18, pretrained=False, cbs=cb)
    with learn.no_bar(), learn.no_logging():
        t = time.perf_counter(); learn.fit(2); fit_s = time.perf_counter() - t
    per_batch = fit_s / (2 * 48) # training and validation together, per training batch
    print(f'machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; '
          f'fit(2): {fit_s:.1f} s, {per_batch * 1e3:.0f} ms a training batch (validation included)')
    return learn

def main():
    "Replay batches 32 + d of epoch 1, three times each"
    learn = trained()
    for d in (0, 4, 8, 15):
        times, r = [], None
        for _ in range(3):
            t = time.perf_counter(); r = learn.reproducible.replay(1, 32 + d); times.append(time.perf_counter() - t)
        assert r.matched and r.ran == d, r.verdict()
        print(f'{d:2d} batches from the checkpoint: replay {statistics.median(times):.2f} s (median of 3); '
              f'{r.verdict()[:60]}...')

if __name__ == '__main__': main()
