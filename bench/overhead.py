"""Overhead of ReproducibleCallback on the demo workload (digits, resnet18, 32 px, fine_tune(1) on 2 CPU cores).

Four arms, interleaved in one process with the order rotated each round: no callback; the callback with batch records
off and no data isolation (`every=0, isolate_data=False`: seeding, determinism flags, fit facts); recording every
batch (`isolate_data=False`); and the default (recording and data isolation). Reports, for wall time and for the
process's CPU time (less disturbed by other load on a shared machine), the median of the per-round ratios to the
arm without the callback; a microbenchmark of the per-batch recording steps; and the record's size.

    python bench/overhead.py [--rounds 5] [--n N] [--arms seeding recording isolated] [--isolation-only]
"""
import argparse, functools, os, platform, statistics, sys, tempfile, time, timeit, warnings
from pathlib import Path
import torch
import fastai.callback.schedule  # noqa: F401  (fine_tune)
from fastai.metrics import error_rate
from fastai.vision.learner import vision_learner
from fastai.vision.models import resnet18
from fastai_repro.all import ReproducibleCallback, digits_dls, make_digits_folder, generator_fingerprints, tensors_digest
from fastai_repro.digests import step_fingerprints

ARMS = {'none': None, 'seeding': dict(every=0, isolate_data=False), 'recording': dict(isolate_data=False),
        'isolated': dict()}

def fit_time(path, arm, seed=21):
    dls = digits_dls(path, seed=21)
    cbs = [] if arm == 'none' else [ReproducibleCallback(seed, **ARMS[arm])]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn = vision_learner(dls, resnet18, pretrained=False, metrics=error_rate, cbs=cbs)
    with learn.no_bar(), learn.no_logging():
        t, c = time.perf_counter(), time.process_time()
        learn.fine_tune(1)
        t, c = time.perf_counter() - t, time.process_time() - c
    return (t, c), learn

def micro(learn, n=2000):
    "Microseconds per batch for each recording step, on a real batch of the demo"
    xb, yb = learn.dls.train.one_batch()
    us = lambda f: min(timeit.repeat(f, number=n, repeat=5)) / n * 1e6
    return dict(fingerprints=us(lambda: (generator_fingerprints(learn.dls), step_fingerprints())),
                inputs_digest=us(lambda: tensors_digest((xb,))), targets_digest=us(lambda: tensors_digest((yb,))))

def timed(f, acc:dict, key:str, when=None, depth:dict|None=None):
    "`f`, adding the seconds each call takes (where `when()`) to `acc[key]`; `depth[key]` counts the calls under way"
    @functools.wraps(f)
    def _f(*args, **kwargs):
        if when is not None and not when(): return f(*args, **kwargs)
        t = time.perf_counter()
        if depth is not None: depth[key] += 1
        try: return f(*args, **kwargs)
        finally:
            acc[key] += time.perf_counter() - t
            if depth is not None: depth[key] -= 1
    return _f

def isolation_cost(path, seed=21):
    """Seconds the data isolation's own code takes inside one default `fine_tune(1)`: time in the keyed wrappers of
    `do_item` and of the `after_batch` pipeline, less the time in what they wrap, plus keying, giving back and releasing
    each loader each epoch (the timers' own cost counts as isolation, so this errs high). Free of the round-to-round
    noise and of which augmentations the keys happen to pick"""
    from fastai.data.load import DataLoader
    from fasttransform import Pipeline
    from fastai_repro import keyed_data, scope
    acc, depth = dict.fromkeys(('item', 'item_inner', 'batch', 'batch_inner', 'epoch'), 0.), dict(item=0, batch=0)
    owners = dict(item=(keyed_data.KeyedItem, '__call__'), item_inner=(DataLoader, 'do_item'),
                  batch=(keyed_data.KeyedBatch, '__call__'), batch_inner=(Pipeline, '__call__'))
    saved = {k: getattr(o, m) for k, (o, m) in owners.items()}
    when = dict(item_inner=lambda: depth['item'] > 0, batch_inner=lambda: depth['batch'] > 0) # inside a wrapper only
    for k, (o, m) in owners.items(): setattr(o, m, timed(saved[k], acc, k, when.get(k), depth if k in depth else None))
    per_epoch = ((keyed_data, 'isolate_loader'), (scope, 'give_back'), (scope, 'release_loader')) # where called
    kept = {n: getattr(m, n) for m, n in per_epoch}
    for m, n in per_epoch: setattr(m, n, timed(kept[n], acc, 'epoch'))
    try: (t, c), _ = fit_time(path, 'isolated', seed)
    finally:
        for k, (o, m) in owners.items(): setattr(o, m, saved[k])
        for m, n in per_epoch: setattr(m, n, kept[n])
    cost = acc['item'] - acc['item_inner'] + acc['batch'] - acc['batch_inner'] + acc['epoch']
    return dict(fit_s=t, items_s=acc['item'] - acc['item_inner'], batches_s=acc['batch'] - acc['batch_inner'],
                epochs_s=acc['epoch'], share=cost / t)

def record_size(learn, tmp):
    rec = learn.reproducible.record
    p = rec.save(Path(tmp)/'run.jsonl')
    lines = p.read_text().splitlines(True)
    batch_bytes = sum(len(l) for l in lines if l.startswith('['))
    mem = sum(sys.getsizeof(r) + sum(sys.getsizeof(v) for v in r) for r in rec.rows)
    return dict(batches=len(rec.rows), file_bytes=p.stat().st_size, bytes_per_batch_file=batch_bytes / len(rec.rows),
                bytes_per_batch_memory=mem / len(rec.rows))

def print_isolation(path, fits:int=3):
    "The isolation's share of `fits` default `fine_tune(1)`s, measured inside each"
    for r in range(fits):
        c = isolation_cost(path, 21 + r)
        print('isolation measured inside the fit: ' + ', '.join(
            f'{k} {v:.2%}' if k == 'share' else f'{k} {v:.3f}' for k, v in c.items()), flush=True)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--n', type=int, default=None, help='images (default: all 1797)')
    ap.add_argument('--arms', nargs='+', choices=list(ARMS)[1:], default=list(ARMS)[1:], help='arms besides `none`')
    ap.add_argument('--isolation-only', action='store_true', help='only the isolation measured inside 3 fits')
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    path = make_digits_folder(Path(tmp)/'digits', n=args.n)
    if args.isolation_only: return print_isolation(path)
    arms = ['none'] + args.arms
    fit_time(path, 'none') # warm-up
    times, last = {a: [] for a in arms}, None
    for r in range(args.rounds):
        for a in arms[r % len(arms):] + arms[:r % len(arms)]:
            t, learn = fit_time(path, a, seed=21 + r) # a new seed each round: other augmentations, in every arm alike
            times[a].append(t)
            if ARMS[a] and ARMS[a].get('every', 1): last = learn # a learner with a batch record
        print(f'round {r}: ' + '  '.join(f'{a} {times[a][-1][0]:.2f}s' for a in arms), flush=True)
    ratio = lambda a, k: statistics.median(x[k] / y[k] for x, y in zip(times[a], times['none']))
    print(f'\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch '
          f'threads, python {platform.python_version()}, torch {torch.__version__}')
    print(f"median fine_tune(1) without the callback: {statistics.median(t[0] for t in times['none']):.2f} s wall, "
          f"{statistics.median(t[1] for t in times['none']):.2f} s CPU ({args.rounds} rounds)")
    print('median ratio to no callback          wall     CPU')
    for a in arms[1:]: print(f'  {a:<34} {ratio(a, 0):.4f}  {ratio(a, 1):.4f}')
    if {'recording', 'isolated'} <= set(arms): # the two differ only in `isolate_data`
        iso = lambda k: statistics.median(x[k] / y[k] for x, y in zip(times['isolated'], times['recording']))
        print(f"  {'isolated / recording (isolation alone)':<34} {iso(0):.4f}  {iso(1):.4f}")
    if 'isolated' in arms: print_isolation(path)
    if last is None: return
    for k, v in micro(last).items(): print(f'per batch, {k}: {v:.1f} us')
    for k, v in record_size(last, tmp).items(): print(f'record, {k}: {v:.0f}')

if __name__ == '__main__': main()
