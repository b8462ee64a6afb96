"""Issue 25: the callback's fixed cost per fit on the CPU, and where it goes.

    python bench/per_fit.py [--pairs 12] [--arch resnet18|small] [--profile]

One `fit(1)` of `vision_learner(arch, pretrained=False)` (or a four-layer CNN, `small`) on 16-px digits: 3 training
batches of 64 and validation (256 images). Interleaved pairs, with and without `ReproducibleCallback(21)`, the order
alternating; prints the median difference (ms) and the median ratio. With `--profile`, one fit with the callback
under cProfile, the callback's own functions first."""
import argparse, cProfile, pstats, statistics, tempfile, time, warnings; warnings.simplefilter('ignore')
from pathlib import Path
from torch import nn
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.vision.learner import vision_learner
from fastai.vision.models import resnet18
from fastai_repro.all import ReproducibleCallback, digits_dls, make_digits_folder

def small() -> nn.Module:
    "Four layers: two convolutions, a pooling, a linear head"
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

def learner(data, arch:str, callback:bool) -> Learner:
    "A fresh learner on the 256 digits"
    dls = digits_dls(data, seed=21, size=16, bs=64)
    cbs = [ReproducibleCallback(21, compare_previous=False)] if callback else []
    if arch == 'resnet18': return vision_learner(dls, resnet18, pretrained=False, cbs=cbs)
    return Learner(dls, small(), loss_func=CrossEntropyLossFlat(), cbs=cbs)

def fit_time(data, arch:str, callback:bool) -> float:
    "Seconds of one `fit(1)`"
    learn = learner(data, arch, callback)
    t = time.perf_counter()
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    return time.perf_counter() - t

if __name__ == '__main__':
    p = argparse.ArgumentParser()
    p.add_argument('--pairs', type=int, default=12); p.add_argument('--arch', default='resnet18')
    p.add_argument('--profile', action='store_true')
    a = p.parse_args()
    data = make_digits_folder(Path(tempfile.gettempdir())/'fastai_repro_digits_256_16', size=16, n=256)
    fit_time(data, a.arch, True); fit_time(data, a.arch, False) # warm up
    if a.profile:
        learn = learner(data, a.arch, True)
        pr = cProfile.Profile(); pr.enable()
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
        pr.disable()
        pstats.Stats(pr).sort_stats('cumulative').print_stats('fastai_repro', 30)
    else:
        diffs, ratios = [], []
        for i in range(a.pairs):
            order = (True, False) if i % 2 == 0 else (False, True)
            t = {cb: fit_time(data, a.arch, cb) for cb in order}
            diffs.append(t[True] - t[False]); ratios.append(t[True] / t[False])
        print(f'{a.arch}: per-fit cost {statistics.median(diffs) * 1000:.1f} ms (median of {a.pairs} pairs), '
              f'ratio {statistics.median(ratios):.3f}; pairs (ms): ' +
              ', '.join(f'{d * 1000:.0f}' for d in diffs))
