"""What watching each training batch costs (`ReproducibleCallback(on_anomaly='warn')`, issue 28): the watch's own time
per batch (the gradient norm and one transfer of two numbers), and fits with and without it, interleaved.

    python bench/anomaly_cost.py [PAIRS]

The watch alone is timed on the learner's real gradients after a backward pass (resnet18 at 32 px on the digits, and
a four-layer CNN); the fits are `fit(1)` of resnet18 on 384 digits at 32 px, bs=64 (6 training batches), quiet, in
alternating order (with, without, with, ...), and the median of the per-pair ratios is reported."""
import os, platform, statistics, sys, tempfile, time, timeit, warnings; warnings.simplefilter('ignore')
from pathlib import Path
import torch
from torch import nn
from fastai.vision.all import cnn_learner, resnet18, error_rate
from fastai_repro.all import ReproducibleCallback, make_digits_folder, digits_dls
from fastai_repro.anomaly import AnomalyWatch
from fastai_repro.recorder import FitRecorder
from fastai_repro.runrecord import RunRecord

PAIRS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
data = make_digits_folder(Path(tempfile.mkdtemp())/'d', size=32, n=480)

def learner(on_anomaly):
    "resnet18 on the digits, with the callback (watching or not)"
    cb = ReproducibleCallback(21, compare_previous=False, on_anomaly=on_anomaly)
    return cnn_learner(digits_dls(data, seed=21, size=32), resnet18, pretrained=False, metrics=error_rate, cbs=cb)

def watch_ms(learn, n=50) -> float:
    "The watch's time per batch (ms, best of 5 runs of `n`) on `learn`'s gradients after one backward pass"
    xb, yb = learn.dls.one_batch()
    learn.model.train(); learn.loss = learn.loss_func(learn.model(xb), yb); learn.loss.backward()
    rec = FitRecorder(RunRecord(), 0, 1, False, lambda rows: None, lambda: False)
    rec.at, rec.row, w = (0, True, 0), {}, AnomalyWatch('warn')
    return min(timeit.repeat(lambda: w(learn, rec), number=n, repeat=5)) / n * 1e3

def small():
    "A four-layer CNN on the same digits"
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    m = nn.Sequential(*[nn.Sequential(nn.Conv2d(c, 16, 3, 2, 1), nn.ReLU()) for c in (3, 16, 16, 16)],
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2))
    return Learner(digits_dls(data, seed=21, size=32), m, loss_func=CrossEntropyLossFlat())

def fit_s(on_anomaly) -> float:
    "Seconds for one quiet `fit(1)`"
    learn = learner(on_anomaly)
    with learn.no_bar(), learn.no_logging():
        t = time.perf_counter(); learn.fit(1); return time.perf_counter() - t

big = learner(None)
print(f'machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, '
      f'threads {torch.get_num_threads()}')
print(f'watch per batch: resnet18 {watch_ms(big):.2f} ms ({sum(p.numel() for p in big.model.parameters()):,} '
      f'parameters), four-layer CNN {watch_ms(small()):.3f} ms')
fit_s(None); fit_s('warn') # warm-up
pairs = [(fit_s('warn'), fit_s(None)) for _ in range(PAIRS)]
ratios = [a / b for a, b in pairs]
print(f'fit(1), resnet18, 6 batches: with the watch {statistics.median(a for a, _ in pairs):.2f} s, without '
      f'{statistics.median(b for _, b in pairs):.2f} s; median ratio {statistics.median(ratios):.3f} '
      f'({PAIRS} pairs, ratios {min(ratios):.3f}-{max(ratios):.3f})')
