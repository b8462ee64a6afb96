"""Issue 27, item 3: a run resumed on another number of processes, with the global batch kept (64: bs=64 on one
process, 32 on each of two). Under `ReproducibleCallback` the training loader deals whole global batches to the ranks
(`keyed_data.rank_share`), so global batch g holds the same items, with the same item transforms, on any world size.
The weights are not expected to be bit-equal after such a resume: `compare` names `world_size`.

Three torchrun launches: one process (`full`, checkpoints), two processes (`full`, checkpoints, then a resume from a
one-process checkpoint), one process (a resume from rank 0's part of a two-process checkpoint)."""
import os, random, warnings
from pathlib import Path
import pytest, torch
from fastai_repro.all import ReproducibleCallback, RunRecord, compare
from fastai_repro.checkpoint import checkpoint_name, checkpoints
from helpers import make_learner, torchrun
from reshard_job import GLOBAL_BS, dls

JOB = Path(__file__).parent/'reshard_job.py'
MID = [(0, 2), (0, 4), (1, 2), (1, 4)] # the mid-epoch checkpoints: one every 2 of an epoch's 6 training batches

def ckpt_at(folder:Path, at:tuple, part=None) -> Path:
    "The checkpoint in `folder` from which its run goes on with training batch `at` (epoch, batch)"
    run = {p.name.split('-fit')[0] for p in checkpoints(folder)}.pop()
    return folder/checkpoint_name(run, 0, *at, part)

@pytest.fixture(scope='module')
def runs(digits, tmp_path_factory):
    "The runs on one and two processes, and the resumes from one to two and from two to one, at random checkpoints"
    out, rnd = tmp_path_factory.mktemp('world_size'), random.Random(os.urandom(8))
    at12, at21 = rnd.choice(MID), rnd.choice(MID)
    def launch(n:int, *args):
        "`reshard_job.py DATA OUT *args` on `n` processes (on one: RANK=0, WORLD_SIZE=1, no process group)"
        r = torchrun(JOB, digits, out, *args, nproc=n)
        assert r.returncode == 0, f'{args} on {n} process(es) failed:\n{r.stderr[-5000:]}'
    launch(1, 'full')
    launch(2, 'full', ckpt_at(out/'ck-w1', at12))
    launch(1, 'resume', ckpt_at(out/'ck-w2', at21, (0, 2)))
    def got(name):
        o = torch.load(out/f'{name}.pth', weights_only=True)
        return {**o, 'record': RunRecord.from_bytes(o['record'])}
    names = ('full-w1-rank0', 'full-w2-rank0', 'full-w2-rank1', 'resume-w2-rank0', 'resume-w2-rank1',
             'resume-w1-rank0')
    return dict(out=out, at12=at12, at21=at21, **{n: got(n) for n in names})

def global_rows(*ranks) -> list:
    "Each global training batch: (epoch, batch, the items' digests, the labels), the ranks' shares in rank order"
    return [(rows[0][0], rows[0][1], [d for r in rows for d in r[2]], [y for r in rows for y in r[3]])
            for rows in zip(*[o['rows'] for o in ranks])]

def after(rows:list, at:tuple) -> list: return [r for r in rows if (r[0], r[1]) >= at]

def test_a_global_batch_is_the_same_on_any_world_size(runs):
    one, two = runs['full-w1-rank0']['rows'], global_rows(runs['full-w2-rank0'], runs['full-w2-rank1'])
    assert len(one) == 12 and [len(r[2]) for r in one] == [GLOBAL_BS] * 12
    assert two == one # the same items, with the same item transforms (digests of the images the model got)
    for epoch in (0, 1): # every item of the epoch once (384 training items, 6 whole global batches; none padded)
        items = [d for r in one if r[0] == epoch for d in r[2]]
        assert len(items) == len(set(items)) == 384
    assert runs['full-w1-rank0']['losses'] != runs['full-w2-rank0']['losses'] # but not the same numbers

@pytest.mark.parametrize('way', ['1to2', '2to1'])
def test_resumed_on_another_world_size(runs, way):
    at = runs['at12'] if way == '1to2' else runs['at21']
    if way == '1to2': never, resumed = runs['full-w1-rank0'], [runs['resume-w2-rank0'], runs['resume-w2-rank1']]
    else: never, resumed = runs['full-w2-rank0'], [runs['resume-w1-rank0']]
    never_rows = never['rows'] if way == '1to2' else global_rows(runs['full-w2-rank0'], runs['full-w2-rank1'])
    got = global_rows(*resumed)
    assert got[0][:2] == at and got == after(never_rows, at) # each global batch after the resume: the same items
    for o in resumed:
        ev = [e for e in o['record'].events if e['event'] == 'resumed']
        assert len(ev) == 1 and ev[0]['world_size'] == ([1, 2] if way == '1to2' else [2, 1]), ev
        c = compare(never['record'], o['record'])
        assert c.causes == ['world_size'], c.report() # never `nondeterminism`, `rng` or `data`
        fd = c.first_divergence
        assert (fd.epoch, fd.phase, fd.iter) == (at[0], 'train', at[1]), c.report() # bit-identical before it
        assert 'went on at fit 0, epoch' in c.fixes['world_size'] and 'not bit-equal' in c.fixes['world_size']
    assert resumed[0]['losses'] != never['losses'][at[0] * 6 + at[1]:] # another world size: other numbers

@pytest.mark.parametrize('world,bs,fix', [(2, 64, 'pass bs=32'), (3, 32, 'no whole bs makes 64 on 3')])
def test_the_global_batch_must_be_kept(runs, digits, monkeypatch, world, bs, fix):
    "On another number of processes with bs unchanged (or no bs that keeps it): refused as the learner is built"
    ck = ckpt_at(runs['out']/'ck-w1', (0, 2))
    monkeypatch.setenv('RANK', '0'); monkeypatch.setenv('WORLD_SIZE', str(world))
    with pytest.raises(ValueError, match=f'global batch 64.*{fix}'), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        make_learner(dls(digits, bs), callback=False, cbs=[ReproducibleCallback(21, resume_from=ck)])

def test_on_one_process_from_two_the_batch_size_is_checked(runs, digits):
    ck = ckpt_at(runs['out']/'ck-w2', (0, 2), (0, 2))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with pytest.raises(ValueError, match=r'on 2 processes with bs=32 each \(global batch 64\).*pass bs=64'):
            make_learner(dls(digits, 32), callback=False, cbs=[ReproducibleCallback(21, resume_from=ck)])
        make_learner(dls(digits, 64), callback=False, cbs=[ReproducibleCallback(21, resume_from=ck)]) # accepted
