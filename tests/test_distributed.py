"""Issue 6: distributed training with fastai's `learn.distrib_ctx()` (Accelerate), 2 processes on the CPU with gloo,
launched by torchrun. Two runs with the callback are bit-identical rank by rank, each rank keeps its own record;
two runs without it differ; ranks that start from different weights are refused with a clear error. Issue 14:
with `per_rank=True` the ranks draw different dropout masks, and runs stay bit-identical."""
import subprocess
from pathlib import Path
import pytest, torch
from fastai_repro.all import RunRecord, compare
from helpers import same_tensors, torchrun

JOB = Path(__file__).parent/'distrib_job.py'

def launch(data, out:Path, mode:str) -> subprocess.CompletedProcess:
    "Run `distrib_job.py` on 2 CPU processes"
    out.mkdir(parents=True)
    return torchrun(JOB, data, out, mode)

@pytest.fixture(scope='module')
def runs(digits, tmp_path_factory):
    "Two distributed runs with the callback (a, b) and two without (c, d)"
    root = tmp_path_factory.mktemp('distributed')
    for name, mode in (('a', 'callback'), ('b', 'callback'), ('c', 'plain'), ('d', 'plain')):
        r = launch(digits, root/name, mode)
        assert r.returncode == 0, f'{mode} run failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}'
    return root

def weights(folder:Path, rank:int) -> dict:
    "The final weights that rank `rank` of a run saved"
    return torch.load(folder/f'weights-rank{rank}.pth', weights_only=True)

def records(folder:Path) -> list:
    "This run's records, one per rank, in rank order"
    recs = [RunRecord.load(p) for p in sorted((folder/'records').glob('*.jsonl'))]
    return sorted(recs, key=lambda r: r.fits[0]['env']['rank'])

def test_runs_bit_identical_rank_by_rank(runs):
    for rank in (0, 1):
        wa, wb = weights(runs/'a', rank), weights(runs/'b', rank)
        assert same_tensors(wa, wb), f'rank {rank}'
        la, lb = (torch.load(runs/r/f'losses-rank{rank}.pth') for r in 'ab')
        assert torch.equal(la, lb)

def test_without_the_callback_runs_differ(runs):
    wc, wd = weights(runs/'c', 0), weights(runs/'d', 0)
    assert not same_tensors(wc, wd)

def test_each_rank_keeps_its_own_record(runs):
    ra, rb = records(runs/'a'), records(runs/'b')
    assert [r.fits[0]['env']['rank'] for r in ra] == [0, 1] and ra[0].fits[0]['env']['world_size'] == 2
    files = {RunRecord.load(p).fits[0]['env']['rank']: p.name for p in (runs/'a'/'records').glob('*.jsonl')}
    assert sorted(files) == [0, 1] and all(name.endswith(f'-rank{r}.jsonl') for r, name in files.items())
    for x, y in zip(ra, rb): assert compare(x, y).same
    # DDP keeps the ranks' weights equal, but each rank saw its own shard of every batch
    assert ra[0].fits[0]['final_weights'] == ra[1].fits[0]['final_weights']
    train = lambda r: r.batches.query("phase == 'train'").inputs.tolist()
    assert len(train(ra[0])) == len(train(ra[1])) > 0 and not set(train(ra[0])) & set(train(ra[1]))

def test_ranks_with_different_initial_weights_are_refused(digits, tmp_path):
    r = launch(digits, tmp_path/'skewed', 'skewed')
    assert r.returncode != 0
    for rank in (0, 1):
        msg = (tmp_path/'skewed'/f'error-rank{rank}.txt').read_text()
        assert 'ranks start fit 0 from different weights' in msg and 'ReproducibleCallback(21)' in msg

def test_per_rank_streams(runs):
    "Without per_rank every rank draws the same dropout masks; with it, each its own, and two runs still match"
    a, b = ([torch.load(runs/r/f'per-rank-rank{rank}.pth', weights_only=True) for rank in (0, 1)] for r in 'ab')
    assert len(a[0]['shared']) == len(a[0]['per_rank']) > 0
    assert a[0]['shared'] == a[1]['shared'] # one stream for both ranks: the masks are the same
    assert not set(a[0]['per_rank']) & set(a[1]['per_rank']) # a stream for each rank: no mask in common
    for x, y in zip(a, b):
        assert x['per_rank'] == y['per_rank'] and same_tensors(x['weights'], y['weights'])
        rx, ry = RunRecord.from_bytes(x['record']), RunRecord.from_bytes(y['record'])
        assert compare(rx, ry).same
        mode = [c['settings'] for c in rx.fits[0]['callbacks'] if c['name'].endswith('ReproducibleCallback')]
        assert mode == [{'deterministic': True, 'isolate_data': True, 'per_rank': True}]
    shared = records(runs/'a')[0].fits[0]['callbacks'][0]['settings']
    assert shared['per_rank'] is False
