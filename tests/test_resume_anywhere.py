"""Issue 14: a run killed in the middle of an epoch goes on from its last checkpoint, in a new process, and ends
bit-identical to the run that was never stopped; checkpoints from another run are refused."""
import os, random, shutil, signal, warnings
from functools import partial
from pathlib import Path
import pytest, torch
from fastai.callback.core import Callback
from fastai.callback.training import GradientAccumulation
from fastai.data.core import DataLoaders, TfmdDL
from fastai.learner import Learner
from fastai.losses import MSELossFlat
from fastai.optimizer import SGD, OptimWrapper, ranger
from fastai.test_utils import RegModel, synth_dbunch, synth_learner
from fastai.torch_core import TensorBase
from fastai_repro.all import (ReproducibleCallback, ReproducibilityWarning, RunRecord, RecordError, compare,
                              isolate_loader, weights_equal)
from fastai_repro.checkpoint import checkpoints
from helpers import assert_same_tensors, in_new_processes, quiet_fit, run_script
import ckpt_job, workers_job

KILLED = -signal.SIGKILL

def outcome(folder:Path, mode:str) -> dict:
    "What a job wrote: final weights, the Recorder's values, the record"
    out = torch.load(folder/f'{mode}.pth', weights_only=True)
    return {**out, 'record': RunRecord.from_bytes(out['record'])}

def assert_same_run(a:dict, b:dict):
    "Every weight bit-identical, the same epoch values, and records `compare` calls the same"
    assert_same_tensors(a['weights'], b['weights'])
    assert a['values'] == b['values']
    c = compare(a['record'], b['record'])
    assert c.same, c.report()

@pytest.fixture
def job_dir(small_digits, tmp_path):
    "A folder for one job, beside a copy of the 192 digits (`ckpt_job` reads them from ../digits16)"
    shutil.copytree(small_digits, tmp_path/'digits16')
    return tmp_path/'run'

def batches(method:str) -> list:
    "Every training batch of `ckpt_job`'s run of `method` as (fit, epoch, batch): 4 batches an epoch"
    epochs = [(0, 0), (1, 0), (1, 1)] if method == 'fine_tune' else [(0, 0), (0, 1)]
    return [(f, e, b) for f, e in epochs for b in range(4)]

def test_killed_at_a_random_batch(job_dir):
    "SIGKILL at a random training batch of fine_tune; resumed in a new interpreter from the last checkpoint"
    at = random.Random(os.urandom(8)).choice(batches('fine_tune')[2:]) # from batch 2: a checkpoint exists
    in_new_processes((ckpt_job.main, 'full', job_dir, 'fine_tune'),
                     (ckpt_job.main, 'killed', job_dir, 'fine_tune', 0, at), exitcodes=(0, KILLED))
    assert checkpoints(job_dir/'ck'), f'killed at {at} with no checkpoint'
    run_script(Path(ckpt_job.__file__), 'resume', job_dir, 'fine_tune', 0)
    resumed = outcome(job_dir, 'resume')
    assert [e['event'] for e in resumed['record'].events] == ['resumed'], f'killed at {at}'
    assert_same_run(outcome(job_dir, 'full'), resumed)

@pytest.mark.parametrize('method,workers,at', [('fit_one_cycle', 2, (0, 1, 1)), ('fit_flat_cos', 0, (0, 1, 0)),
                                               ('fit', 0, (0, 0, 3))])
def test_each_fit_method_resumes(job_dir, method, workers, at):
    "Killed mid-epoch, at an epoch's start (from the checkpoint after the last batch) and at the last batch"
    in_new_processes((ckpt_job.main, 'full', job_dir, method, workers),
                     (ckpt_job.main, 'killed', job_dir, method, workers, at), exitcodes=(0, KILLED))
    in_new_processes((ckpt_job.main, 'resume', job_dir, method, workers))
    assert_same_run(outcome(job_dir, 'full'), outcome(job_dir, 'resume'))

# --- checkpoints in one process: what is written, what is refused ---------------------------------------------------
def fit_synth(cb, n_epoch=2, **kw):
    "A synthetic learner trained with `cb`: 10 training batches an epoch"
    return quiet_fit(synth_learner(n_trn=10, cbs=cb, **kw), n_epoch, how='fit_one_cycle') # 10 batches of 16

class Crash(Callback):
    "Raises as training batch 6 of epoch 1 begins, while `Crash.on`: a switch, not a setting"
    on = False
    def before_batch(self):
        if Crash.on and self.training and (self.epoch, self.iter) == (1, 6): raise RuntimeError('out of memory')

SETUPS = { # what else the learner has: callbacks with state, optimizers with a state dict of their own
    'plain': lambda: {}, 'accumulating': lambda: dict(cbs=[GradientAccumulation(n_acc=32)]), # a step every 2 batches
    'torch_adam': lambda: dict(opt_func=partial(OptimWrapper, opt=torch.optim.Adam)),
    'ranger': lambda: dict(opt_func=ranger)}

@pytest.mark.parametrize('setup', list(SETUPS))
def test_resume_in_one_process(tmp_path, setup):
    """A synthetic fit that crashed goes on from its last checkpoint (before batch 5 of epoch 1, between two steps of
    `GradientAccumulation`) and ends as the fit that did not crash; the crashed run had a progress bar, others not"""
    def learner(cb):
        "The synthetic learner of `setup`, with `cb` and a `Crash` switch"
        kw = {'opt_func': partial(SGD, mom=0.9), **SETUPS[setup]()} # synth_learner's optimizer unless another
        return Learner(synth_dbunch(n_train=10), RegModel(), loss_func=MSELossFlat(), lr=1e-3,
                       **{**kw, 'cbs': [cb, Crash()] + kw.get('cbs', [])})
    full = quiet_fit(learner(ReproducibleCallback(21, compare_previous=False)), 2, how='fit_one_cycle')
    crashed = learner(ReproducibleCallback(21, checkpoint_every=3, checkpoint_dir=tmp_path))
    Crash.on = True
    try:
        with crashed.no_logging(), pytest.raises(RuntimeError, match='out of memory'): crashed.fit_one_cycle(2)
    finally: Crash.on = False
    assert [p.name for p in checkpoints(tmp_path)][-1].endswith('-fit000-epoch0001-batch000005.ckpt')
    resumed = quiet_fit(learner(ReproducibleCallback(21, resume_from=tmp_path)), 2, how='fit_one_cycle')
    assert weights_equal(full.model, resumed.model)
    a, b = full.recorder, resumed.recorder
    assert a.values == b.values and a.hps == b.hps and a.lrs == b.lrs and a.iters == b.iters
    assert torch.equal(torch.stack(a.losses), torch.stack(b.losses))
    assert compare(full.reproducible.record, resumed.reproducible.record).same

def test_checkpoints_kept_and_atomic(tmp_path):
    fit_synth(ReproducibleCallback(21, checkpoint_every=3, checkpoint_dir=tmp_path, keep=2))
    names = sorted(os.listdir(tmp_path))
    assert [n.split('-', 2)[2] for n in names] == ['fit000-epoch0001-batch000008.ckpt',
                                                   'fit000-epoch0001-batch000010.ckpt']
    (tmp_path/f'.{names[0][:-16]}12.ckpt.x1.tmp').write_bytes(b'half a checkpoint') # killed while writing
    assert [p.name for p in checkpoints(tmp_path)] == names[-2:]
    data = (tmp_path/names[-1]).read_bytes()
    (tmp_path/names[-1]).write_bytes(data[:len(data) // 3])
    with pytest.raises(RecordError, match='damaged, cut short'): ReproducibleCallback(21, resume_from=tmp_path)

def test_a_checkpoint_from_another_run_is_refused(tmp_path):
    fit_synth(ReproducibleCallback(21, checkpoint_dir=tmp_path))
    with pytest.raises(ValueError, match='seed 21, not 22'):
        ReproducibleCallback(22, resume_from=checkpoints(tmp_path)[-1])
    with pytest.raises(ValueError, match=r'no checkpoint of seed 22 .* of seed \[21\]'):
        ReproducibleCallback(22, resume_from=tmp_path)
    for why, change in (('data set', dict(n_epoch=2, n_trn=5)), ('fit call', dict(n_epoch=3)),
                        ('model', dict(n_epoch=2, model=torch.nn.Sequential(torch.nn.Linear(1, 1))))):
        kw = {k: v for k, v in change.items() if k != 'n_epoch'}
        built = []
        with pytest.raises(ValueError, match=f'from another {why}: fit 0 differs'):
            built.append(synth_learner(n_trn=kw.pop('n_trn', 10), cbs=ReproducibleCallback(21, resume_from=tmp_path),
                                       **kw))
            with built[0].no_bar(), built[0].no_logging(): built[0].fit_one_cycle(change['n_epoch'])
        assert bool(built) == (why == 'fit call') # the data set and the model are refused as the learner is built

def test_bad_checkpoint_settings_are_refused_at_once(tmp_path):
    with pytest.raises(ValueError, match='checkpoint_every=5 needs checkpoint_dir'):
        ReproducibleCallback(21, checkpoint_every=5)
    with pytest.raises(ValueError, match='keep must be an int >= 1, got 0'):
        ReproducibleCallback(21, checkpoint_dir=tmp_path, keep=0)
    with pytest.raises(ValueError, match='need isolate_data=True'):
        ReproducibleCallback(21, checkpoint_dir=tmp_path, isolate_data=False)
    with pytest.raises(ValueError, match='does not exist'): ReproducibleCallback(21, resume_from=tmp_path/'nothing')
    with pytest.raises(ValueError, match='no checkpoint of seed 21 in this folder'):
        ReproducibleCallback(21, resume_from=tmp_path)

class Stream(torch.utils.data.IterableDataset):
    "32 zeros and their zero targets, one after the other: a data set without an index"
    def __iter__(self): return ((TensorBase(torch.zeros(1)), TensorBase(torch.zeros(1))) for _ in range(32))

def test_no_checkpoint_that_could_not_be_resumed(tmp_path):
    "With an iterable data set, a resume would have to make the batches before: the callback says so and writes none"
    dls = DataLoaders(TfmdDL(Stream(), bs=8, n=32), TfmdDL(Stream(), bs=8, n=32)) # `n`: fastai trains on a length
    learn = Learner(dls, torch.nn.Linear(1, 1), loss_func=MSELossFlat(),
                    cbs=ReproducibleCallback(21, checkpoint_every=1, checkpoint_dir=tmp_path))
    with pytest.warns(ReproducibilityWarning, match='not written in a training loader without an index'):
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert not checkpoints(tmp_path) and len(learn.recorder.values) == 1 # the fit ran

def test_each_epoch_keyed_from_batch_0():
    "The callback keys an epoch's batches 0, 1, ... as `isolate_loader(dl, (seed, fit, epoch, 0))` does: batch 0 too"
    seen = []
    class First(Callback):
        "Keeps the inputs of each epoch's first training batch"
        def before_batch(self):
            if self.training and self.iter == 0: seen.append(self.xb[0].clone())
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', ReproducibilityWarning) # the model is built before the callback: no matter here
        learn = Learner(workers_job.loaders(0, False), torch.nn.Linear(4, 2), loss_func=torch.nn.CrossEntropyLoss(),
                        cbs=[ReproducibleCallback(21, compare_previous=False), First()])
    with learn.no_bar(), learn.no_logging(): learn.fit(2)
    assert len(seen) == 2
    for epoch, got in enumerate(seen):
        dl = workers_job.loaders(0, False).train # random item and batch transforms
        isolate_loader(dl, (21, 0, epoch, 0))
        assert torch.equal(next(iter(dl))[0], got), f'epoch {epoch}'

class LongDL(TfmdDL):
    "A loader that says it has one batch more than it makes, as fastai's `DistributedDL` does when a rank's share is"
    def __len__(self): return super().__len__() + 1 # not whole batches (`tests/test_distributed_resume.py`)

def test_epoch_checkpoint_when_the_loader_counts_one_too_many(tmp_path):
    "The checkpoint after each epoch is written after the last batch run, not the last one `len` promised"
    def learner(cb):
        "A synthetic learner of 10 batches an epoch whose training loader says 11"
        dls = synth_dbunch(n_train=10)
        dls.train.__class__ = LongDL
        return Learner(dls, RegModel(), loss_func=MSELossFlat(), lr=1e-3, cbs=cb)
    full = quiet_fit(learner(ReproducibleCallback(21, compare_previous=False)), 2, how='fit_one_cycle')
    quiet_fit(learner(ReproducibleCallback(21, checkpoint_dir=tmp_path, keep=5)), 2, how='fit_one_cycle')
    names = [p.name.split('-', 2)[2] for p in checkpoints(tmp_path)]
    assert names == ['fit000-epoch0000-batch000010.ckpt', 'fit000-epoch0001-batch000010.ckpt'], names
    os.remove(checkpoints(tmp_path)[-1]) # resume after the first epoch
    resumed = quiet_fit(learner(ReproducibleCallback(21, resume_from=tmp_path)), 2, how='fit_one_cycle')
    assert weights_equal(full.model, resumed.model)
    assert compare(full.reproducible.record, resumed.reproducible.record).same
