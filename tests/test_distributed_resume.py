"""Issue 27, items 1, 2 and 4: checkpoints and resuming in distributed training (`learn.distrib_ctx()`, 2 CPU
processes, gloo, torchrun). Each rank writes its own part of every checkpoint; a checkpoint counts only when every
rank's part is there. A job whose rank 1 is killed with SIGKILL at a random training batch, after rank 0 wrote its
part of the checkpoint due there and before rank 1 wrote its own, resumes from the checkpoint before (the incomplete
one is ignored) and ends bit-identical, rank by rank, to the run never stopped, with `per_rank` off and on."""
import os, random, warnings
from pathlib import Path
import pytest, torch
from fastai_repro.all import RunRecord, compare
import fastai_repro.checkpoint as ckpt
from fastai_repro.checkpoint import (checkpoint_name, checkpoints, check_resuming, launched_part, Checkpointer,
                                     Resume)
from fastai.test_utils import synth_learner
from helpers import assert_same_tensors, torchrun

JOB = Path(__file__).parent/'distrib_ckpt_job.py'
# 384 training digits, 192 a rank, 3 batches of 64 an epoch: a checkpoint before batches 1 and 2 and after batch 2.
# Where rank 1 is killed, and the checkpoint the run must go on from (the one due at the kill is incomplete)
KILLS = {(0, 2): (0, 1), (1, 1): (0, 3), (1, 2): (1, 1)}

@pytest.fixture(scope='module')
def full(digits, tmp_path_factory):
    "The runs never stopped, shared streams and per-rank streams, in one job"
    out = tmp_path_factory.mktemp('distributed_resume')
    r = torchrun(JOB, digits, out, 'full')
    assert r.returncode == 0, f'full run failed:\n{r.stderr[-5000:]}'
    return out

def outcome(out:Path, name:str, rank:int) -> dict:
    "What rank `rank` of job `name` wrote"
    o = torch.load(out/f'{name}-rank{rank}.pth', weights_only=True)
    return {**o, 'record': RunRecord.from_bytes(o['record'])}

@pytest.mark.parametrize('variant', ['shared', 'per_rank'])
def test_killed_rank_resumes_bit_identical(full, digits, tmp_path, variant):
    at = random.Random(os.urandom(8)).choice(sorted(KILLS))
    r = torchrun(JOB, digits, tmp_path, f'killed-{variant}', f'{at[0]},{at[1]}')
    assert r.returncode != 0, 'the killed job ended normally'
    ck = tmp_path/f'ck-{variant}'
    due = lambda rank: [p for p in ck.iterdir() if p.name.endswith(
        f'-epoch{at[0]:04d}-batch{at[1]:06d}-rank{rank}of2.ckpt')]
    assert due(0) and not due(1), f'killed at {at}: rank 0 wrote its part, rank 1 did not'
    latest = [checkpoints(ck, part=(rank, 2))[-1].name for rank in (0, 1)]
    e, b = KILLS[at]
    assert all(n.endswith(f'-epoch{e:04d}-batch{b:06d}-rank{rank}of2.ckpt') for rank, n in enumerate(latest)), latest
    r = torchrun(JOB, digits, tmp_path, f'resume-{variant}')
    assert r.returncode == 0, f'resume after a kill at {at} failed:\n{r.stderr[-5000:]}'
    for rank in (0, 1):
        a, b_ = outcome(full, f'full-{variant}', rank), outcome(tmp_path, f'resume-{variant}', rank)
        assert_same_tensors(a['weights'], b_['weights'])
        assert len(a['losses']) == 6 and b_['losses'] == a['losses'][e * 3 + b:] # from the batch it went on with
        assert a['values'] == b_['values']
        c = compare(a['record'], b_['record'])
        assert c.same, c.report()
        ev = [x for x in b_['record'].events if x['event'] == 'resumed']
        assert len(ev) == 1 and ev[0]['path'].endswith(latest[rank]), ev
    assert outcome(full, 'full-shared', 0)['losses'] != outcome(full, 'full-per_rank', 0)['losses'] # two streams

def fake(folder:Path, run:str, pos:tuple, *parts, mtime:int|None=None):
    "Empty files named as checkpoint parts (the names are what `checkpoints` reads), last written at `mtime` (s)"
    folder.mkdir(exist_ok=True)
    for part in parts:
        (p := folder/checkpoint_name(run, *pos, part)).touch()
        if mtime is not None: os.utime(p, (mtime, mtime))

def test_only_complete_checkpoints_count(tmp_path):
    run = 'seed21-0123abcd'
    fake(tmp_path, run, (0, 0, 1), (0, 2), (1, 2))
    fake(tmp_path, run, (0, 0, 2), (0, 2)) # rank 1 died before writing its part
    fake(tmp_path, run, (0, 0, 3), (1, 2)) # rank 0's part removed
    names = lambda **kw: [p.name.split(run)[1] for p in checkpoints(tmp_path, **kw)]
    assert names(part=(0, 2)) == ['-fit000-epoch0000-batch000001-rank0of2.ckpt']
    assert names(part=(1, 2)) == ['-fit000-epoch0000-batch000001-rank1of2.ckpt']
    assert len(names(part=(0, 2), complete=False)) == 2 # what rank 0 wrote: `keep` counts them
    assert names(part=None) == [] and len(names()) == 2 # one process's: none; any complete one: both parts
    fake(tmp_path, run, (0, 0, 4), (0, 3), (1, 3), (2, 3))
    assert names(part=(0, 2)) == ['-fit000-epoch0000-batch000001-rank0of2.ckpt'] # three ranks' parts: not its own
    (tmp_path/checkpoint_name(run, 0, 0, 5, None).replace('.ckpt', '-rank2of2.ckpt')).touch() # rank 2 of 2: no name
    assert len(checkpoints(tmp_path, complete=False)) == 7 # every part written, but not the impossible one

def test_another_number_of_processes_reads_rank_0s_part(tmp_path, monkeypatch):
    "Resumed on another number of processes (item 3): every process reads rank 0's part of the last complete one"
    run = 'seed21-0123abcd'
    fake(tmp_path, run, (0, 0, 1), (0, 2), (1, 2))
    fake(tmp_path, run, (0, 0, 2), (0, 2)) # rank 1 died before writing its part
    want = checkpoint_name(run, 0, 0, 1, (0, 2))
    assert [ckpt._find(tmp_path, 21, part).name for part in (None, (0, 3), (2, 3))] == [want] * 3
    fake(tmp_path, 'seed21-0000000b', (0, 0, 9), None, mtime=10**10) # a one-process run wrote last: its checkpoint
    assert ckpt._find(tmp_path, 21, (1, 2)).name == checkpoint_name('seed21-0000000b', 0, 0, 9, None)
    monkeypatch.setenv('RANK', '1'); monkeypatch.setenv('WORLD_SIZE', '2')
    with pytest.raises(ValueError, match='keep=1 in distributed training'):
        check_resuming(5, tmp_path, 1, None, 0, True)
    check_resuming(5, tmp_path, 2, None, 0, True)
    monkeypatch.setenv('WORLD_SIZE', '1')
    check_resuming(5, tmp_path, 1, None, 0, True) # one process: one part, keep=1 is safe

def test_no_complete_checkpoint_is_said(tmp_path):
    fake(tmp_path, 'seed21-0123abcd', (0, 0, 1), (0, 2))
    with pytest.raises(ValueError, match='that wrote last there has the parts of all 2 ranks'):
        Resume(tmp_path, 21, (1, 2))

def test_every_rank_ranks_runs_alike(tmp_path):
    "Run X resumed and rewrote rank 0's part of a later checkpoint; run Y wrote in between: both ranks take X's 4"
    x, y = 'seed21-0000000a', 'seed21-0000000b'
    fake(tmp_path, x, (0, 0, 4), (0, 2), (1, 2), mtime=100)
    fake(tmp_path, x, (0, 0, 5), (0, 2), mtime=300) # rank 1 died before writing its part
    fake(tmp_path, y, (0, 0, 3), (0, 2), (1, 2), mtime=200)
    got = [ckpt._find(tmp_path, 21, (r, 2)).name for r in (0, 1)]
    assert got == [checkpoint_name(x, 0, 0, 4, (r, 2)) for r in (0, 1)], got

def test_the_run_that_wrote_last_decides(tmp_path):
    "A newer run on 2 processes: a resume on one process goes on from it, not from an older one-process run"
    fake(tmp_path, 'seed21-0000000a', (0, 0, 2), None, mtime=100)
    fake(tmp_path, 'seed21-0000000b', (0, 0, 9), (0, 2), (1, 2), mtime=200)
    assert ckpt._find(tmp_path, 21).name == checkpoint_name('seed21-0000000b', 0, 0, 9, (0, 2))

def test_launched_part():
    env = lambda **kw: {k: v for k, v in {**os.environ, **kw}.items() if v is not None}
    cases = [(dict(RANK='1', WORLD_SIZE='2'), (1, 2)), (dict(RANK=None, WORLD_SIZE='2'), None),
             (dict(RANK='0', WORLD_SIZE='1'), None), (dict(RANK='2', WORLD_SIZE='2'), None), (dict(RANK='x'), None)]
    for kw, want in cases:
        with pytest.MonkeyPatch.context() as m:
            m.setattr(os, 'environ', env(**{'WORLD_SIZE': None, 'RANK': None, **kw}))
            assert launched_part() == want, kw

def rank0_writer(tmp_path, monkeypatch, keep=2, since=None):
    "A `Checkpointer` of run `seed21-0123abcd` that writes rank 0's parts of 2 (`distributed` faked)"
    monkeypatch.setattr(ckpt, 'distributed', lambda: (0, 2))
    learn = synth_learner()
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter('ignore'); learn.fit(1)
    learn.epoch, learn.n_iter, learn.n_epoch = 0, 10, 1
    rec = RunRecord(fits=[dict(fit=0, n_epoch=1)])
    return Checkpointer(tmp_path, 1, keep, 'seed21-0123abcd', since), learn, rec

def test_the_newest_complete_part_is_kept(tmp_path, monkeypatch):
    "keep=2: rank 1's write of batch 3 failed; rank 0 writes 3 and 4 and keeps its part of 2, the last complete one"
    ck, learn, rec = rank0_writer(tmp_path, monkeypatch)
    for b in (1, 2): (tmp_path/checkpoint_name(ck.run, 0, 0, b, (1, 2))).touch()
    for b in (1, 2, 3, 4): ck.write(learn, 21, 0, b, rec)
    mine = sorted(p.name for p in checkpoints(tmp_path, part=(0, 2), complete=False))
    assert mine == [checkpoint_name(ck.run, 0, 0, b, (0, 2)) for b in (2, 3, 4)], mine
    assert checkpoints(tmp_path, part=(0, 2))[-1].name == checkpoint_name(ck.run, 0, 0, 2, (0, 2))

def test_another_jobs_parts_are_removed(tmp_path, monkeypatch):
    "A run goes on from batch 2: this rank's parts after it (another job's) go before it writes, never to be mixed"
    ck, learn, rec = rank0_writer(tmp_path, monkeypatch, keep=5, since=(0, 0, 2))
    for b in (1, 2, 3, 4): (tmp_path/checkpoint_name(ck.run, 0, 0, b, (0, 2))).touch()
    ck.write(learn, 21, 0, 3, rec)
    mine = sorted(p.name for p in checkpoints(tmp_path, part=(0, 2), complete=False))
    assert mine == [checkpoint_name(ck.run, 0, 0, b, (0, 2)) for b in (1, 2, 3)], mine
    assert (tmp_path/checkpoint_name(ck.run, 0, 0, 3, (0, 2))).stat().st_size > 0 # the new one
