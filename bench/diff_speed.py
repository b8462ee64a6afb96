"""How fast `fastai-repro diff` starts and how fast it compares two 500,000-batch records (issue 11).

Each measurement is a fresh process (`python -m fastai_repro diff A B`), wall time from start to exit, so start-up
(imports) is included. Arms are interleaved, round by round; the medians are printed. With `--old PATH` (a checkout
of an earlier commit, e.g. `git worktree add /tmp/old 7933b0d`) the same runs are made with that code on records it
writes itself, for a before/after table.

    python bench/diff_speed.py [--rounds 5] [--batches 500000] [--old /tmp/old]
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np

COLUMNS = ['fit', 'epoch', 'phase', 'iter', 'rng_random', 'rng_numpy', 'rng_torch', 'rng_dl0', 'rng_dl1', 'inputs',
           'targets', 'loss', 'rng_torch_step'] # what the callback records on the CPU with two loaders

def rows(n:int, per_epoch:int=1000, seed:int=0) -> list:
    "`n` batch rows as the callback writes them: 90 % train, 10 % valid batches per epoch, random 64-bit digests"
    g = np.random.default_rng(seed)
    i = np.arange(n)
    epoch, k = i // per_epoch, i % per_epoch
    train = k < per_epoch * 9 // 10
    it = np.where(train, k, k - per_epoch * 9 // 10)
    ints = g.integers(-2**63, 2**63 - 1, size=(n, 8), dtype=np.int64).tolist()
    loss = g.random(n).tolist()
    return [(0, e, 'train' if t else 'valid', j, *d[:7], l, d[7])
            for e, t, j, d, l in zip(epoch.tolist(), train.tolist(), it.tolist(), ints, loss)]

def facts() -> dict:
    "One fit's facts, as the callback keeps them (values made up; their size is what matters)"
    return dict(fit=0, seed=21, fit_seed=5, env=dict(python='3.11', torch='2.14.1', threads=dict(intra_op=2),
                flags={'cudnn.deterministic': True}), call=[dict(method='fit', args=dict(n_epoch=500))], n_epoch=500,
                hypers=[dict(lr=1e-3)], items=1, split=2, n_train=1, n_valid=1, dataloaders=[dict(bs=64)],
                architecture=3, init_weights=4, final_weights=5, end=dict(status='completed'))

def write(folder:Path, code:str, n:int):
    "Write records a (n batches), b (a's copy, one loss changed near the end) and small (100 batches) with `code`"
    script = f'''
import sys; sys.path.insert(0, {code!r}); sys.path.insert(1, {str(Path(__file__).parent)!r})
from diff_speed import rows, facts
from pathlib import Path
if Path({code!r}, 'fastai_repro', 'runrecord.py').exists(): from fastai_repro.runrecord import RunRecord
else: from fastai_repro.record import RunRecord # before issue 11
from pathlib import Path
f = Path({str(folder)!r}); rs = rows({n})
def rec(rs):
    r = RunRecord(fits=[facts()], columns={COLUMNS!r}); r.rows = rs; return r
rec(rs).save(f/'a.jsonl'); rs[-10] = rs[-10][:11] + (0.5,) + rs[-10][12:]; rec(rs).save(f/'b.jsonl')
rec(rs[:100]).save(f/'small.jsonl')
'''
    subprocess.run([sys.executable, '-c', script], check=True)

def timed(code:str, a:Path, b:Path) -> tuple:
    "Wall seconds of one `fastai-repro diff a b` in a fresh process running `code`'s package, and its exit code"
    cmd = f'import sys; sys.path.insert(0, {code!r}); from fastai_repro.cli import main; sys.exit(main(sys.argv[1:]))'
    t = time.perf_counter()
    r = subprocess.run([sys.executable, '-W', 'ignore', '-c', cmd, 'diff', str(a), str(b)], capture_output=True, text=True)
    return time.perf_counter() - t, r.returncode, r.stdout.splitlines()[0] if r.stdout else r.stderr[-300:]

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--rounds', type=int, default=5); p.add_argument('--batches', type=int, default=500_000)
    p.add_argument('--old', default=None, help='a checkout of an earlier commit, to measure before/after')
    args = p.parse_args()
    arms = {'new': str(Path(__file__).resolve().parents[1])}
    if args.old: arms['old'] = str(Path(args.old).resolve())
    tmp = Path(tempfile.mkdtemp())
    for name, code in arms.items():
        (tmp/name).mkdir(); t = time.perf_counter(); write(tmp/name, code, args.batches)
        print(f'{name}: wrote records in {time.perf_counter() - t:.1f} s; a.jsonl {(tmp/name/"a.jsonl").stat().st_size/1e6:.1f} MB')
    times = {(n, k): [] for n in arms for k in ('start-up', 'diff')}
    for r in range(args.rounds):
        for name in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
            d = tmp/name
            for kind, (a, b) in (('start-up', (d/'small.jsonl', d/'small.jsonl')), ('diff', (d/'a.jsonl', d/'b.jsonl'))):
                s, rc, head = timed(arms[name], a, b)
                times[name, kind].append(s)
                if r == 0: print(f'{name} {kind}: exit {rc}: {head}')
    for (name, kind), ts in times.items():
        print(f'{name:>4} {kind:<9} median {statistics.median(ts):6.2f} s  (min {min(ts):.2f}, max {max(ts):.2f}, {len(ts)} runs)')
    print(json.dumps({f'{n} {k}': round(statistics.median(ts), 3) for (n, k), ts in times.items()}))

if __name__ == '__main__': main()
