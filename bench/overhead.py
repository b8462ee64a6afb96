"""Overhead of ReproducibleCallback on the demo workload (digits, resnet18, 32 px, fine_tune(1) on 2 CPU cores).

Four arms, interleaved in one process with the order rotated each round: no callback; the callback with batch records
off and no data isolation (`every=0, isolate_data=False`: seeding, determinism flags, fit facts); recording every
batch (`isolate_data=False`); and the default (recording and data isolation). Reports, for wall time and for the
process's CPU time (less disturbed by other load on a shared machine), the median of the per-round ratios to the
arm without the callback; a microbenchmark of the per-batch recording steps; and the record's size.

    python bench/overhead.py [--rounds 5] [--n N] [--arms seeding recording isolated]
"""
import argparse, os, platform, statistics, sys, tempfile, time, timeit, warnings
from pathlib import Path
import torch
import fastai.callback.schedule  # noqa: F401  (fine_tune)
from fastai.metrics import error_rate
from fastai.vision.learner import vision_learner
from fastai.vision.models import resnet18
from fastai_repro.all import ReproducibleCallback, digits_dls, make_digits_folder, generator_fingerprints, tensors_digest
from fastai_repro.record import step_fingerprints

ARMS = {'none': None, 'seeding': dict(every=0, isolate_data=False), 'recording': dict(isolate_data=False),
        'isolated': dict()}

def fit_time(path, arm):
    dls = digits_dls(path, seed=21)
    cbs = [] if arm == 'none' else [ReproducibleCallback(21, **ARMS[arm])]
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

def data_passes(path, rounds=10):
    "Seconds for one pass over the train and valid loaders, isolated or not, interleaved: the isolation's own cost"
    from fastai_repro.seeding import fastai_loaders, isolate_loader, release_loader
    dls, t = digits_dls(path, seed=21), {False: [], True: []}
    def one(iso):
        s = time.process_time()
        for i, dl in enumerate(fastai_loaders(dls)):
            if iso: isolate_loader(dl, (21, 0, 0, i))
            for _ in dl: pass
            if iso: release_loader(dl)
        return time.process_time() - s
    one(False); one(True)
    for r in range(rounds):
        for iso in ((False, True) if r % 2 else (True, False)): t[iso].append(one(iso))
    return t

def record_size(learn, tmp):
    rec = learn.reproducible.record
    p = rec.save(Path(tmp)/'run.jsonl')
    lines = p.read_text().splitlines(True)
    batch_bytes = sum(len(l) for l in lines if l.startswith('['))
    mem = sum(sys.getsizeof(r) + sum(sys.getsizeof(v) for v in r) for r in rec.rows)
    return dict(batches=len(rec.rows), file_bytes=p.stat().st_size, bytes_per_batch_file=batch_bytes / len(rec.rows),
                bytes_per_batch_memory=mem / len(rec.rows))

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--n', type=int, default=None, help='images (default: all 1797)')
    ap.add_argument('--arms', nargs='+', choices=list(ARMS)[1:], default=list(ARMS)[1:], help='arms besides `none`')
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    path = make_digits_folder(Path(tmp)/'digits', n=args.n)
    arms = ['none'] + args.arms
    fit_time(path, 'none') # warm-up
    times = {a: [] for a in arms}
    for r in range(args.rounds):
        for a in arms[r % len(arms):] + arms[:r % len(arms)]:
            t, learn = fit_time(path, a)
            times[a].append(t)
            if a != 'none': last = learn
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
    t = data_passes(path)
    med = {k: statistics.median(v) for k, v in t.items()}
    per_fit = (med[True] - med[False]) * 2 / statistics.median(x[1] for x in times['none']) # fine_tune(1): 2 epochs
    print(f'one pass over train and valid, CPU s: {med[False]:.3f} plain, {med[True]:.3f} isolated, ratio '
          f'{statistics.median(b / a for a, b in zip(t[False], t[True])):.4f}; added to fine_tune(1) (2 passes): {per_fit:+.2%}')
    for k, v in micro(last).items(): print(f'per batch, {k}: {v:.1f} us')
    for k, v in record_size(last, tmp).items(): print(f'record, {k}: {v:.0f}')

if __name__ == '__main__': main()
