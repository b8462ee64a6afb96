"""How fast `fastai-repro diff` starts and how fast it compares two 500,000-batch records (issue 11).

Each measurement is a fresh process (`python -m fastai_repro diff A B`), wall time from start to exit, so start-up
(imports) is included. Arms are interleaved, round by round; the medians are printed. With `--old PATH` (a checkout
of an earlier commit, e.g. `git worktree add /tmp/old 7933b0d`) the same runs are made with that code on records it
writes itself, for a before/after table.

    python bench/diff_speed.py [--rounds 5] [--batches 500000] [--old /tmp/old]

With `--columns 1000000,100000,995` it measures records of 2 batches with that many generator columns instead (issue
23: 10**6 columns, 15 MB, took over 11 GB and did not finish in 120 s): wall time and peak memory of one `diff` of
each, in a fresh process per arm, stopped after `--limit` seconds (`/tmp/old` from `git archive HEAD | tar -x`).
"""
import argparse, json, statistics, subprocess, sys, tempfile, time, zlib
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

def wide(path:Path, n_cols:int, n_rows:int=2) -> Path:
    "A record of `n_rows` batches with `n_cols` generator columns, CRC and all, as a crafted or damaged file may be"
    d = lambda o: json.dumps(o, separators=(',', ':')) + '\n'
    cols = ['fit', 'epoch', 'phase', 'iter'] + [f'rng_{i}' for i in range(n_cols)] + ['loss']
    body = d({'format': 'fastai_repro.RunRecord', 'version': 2, 'columns': cols}) + d({'fit': facts()})
    body += ''.join(d([0, 0, 'train', i] + [i] * n_cols + [0.5]) for i in range(n_rows))
    end = {'end': {'fits': 1, 'events': 0, 'batches': n_rows, 'crc32': zlib.crc32(body.encode())}}
    path.write_text(body + d(end))
    return path

def timed_peak(code:str, a:Path, limit:float) -> tuple:
    "Wall seconds, peak resident MB (Linux) and the exit code or 'timeout' of `fastai-repro diff a a` running `code`"
    cmd = (f'import sys, resource; sys.path.insert(0, {code!r}); from fastai_repro.cli import main; '
           'rc = main(sys.argv[1:]); '
           'print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)')
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, '-W', 'ignore', '-c', cmd, 'diff', str(a), str(a)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    peak = 0
    try:
        while p.poll() is None: # the peak from /proc while it runs: a process stopped at the limit reports none
            if time.perf_counter() - t > limit: p.kill(); p.wait(); return limit, peak, 'timeout'
            try: peak = max(peak, int(Path(f'/proc/{p.pid}/status').read_text().split('VmHWM:')[1].split()[0]) // 1024)
            except (OSError, IndexError, ValueError): pass
            time.sleep(0.05)
        err = p.stderr.read().split() # the last word: ru_maxrss in KB
        peak = max(peak, int(err[-1]) // 1024 if err and err[-1].isdigit() else 0)
        return time.perf_counter() - t, peak, p.returncode
    finally: p.stderr.close()

def main_wide(arms:dict, columns:list, limit:float):
    "Time and peak memory of `diff` on records of `columns` generator columns, each arm on the same files"
    tmp = Path(tempfile.mkdtemp())
    for n in columns:
        f = wide(tmp/f'wide{n}.jsonl', n)
        for name, code in arms.items():
            s, mb, rc = timed_peak(code, f, limit)
            print(f'{name:>4} {n:>8} columns ({f.stat().st_size/1e6:5.1f} MB): {s:7.2f} s, peak {mb:6d} MB, exit {rc}')
        f.unlink()

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--rounds', type=int, default=5); p.add_argument('--batches', type=int, default=500_000)
    p.add_argument('--old', default=None, help='a checkout of an earlier commit, to measure before/after')
    p.add_argument('--columns', default=None, help='comma-separated column counts: measure wide records instead')
    p.add_argument('--limit', type=float, default=120, help='seconds a wide diff may run (with --columns)')
    args = p.parse_args()
    arms = {'new': str(Path(__file__).resolve().parents[1])}
    if args.old: arms['old'] = str(Path(args.old).resolve())
    if args.columns: return main_wide(arms, [int(n) for n in args.columns.split(',')], args.limit)
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
