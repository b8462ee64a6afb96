"""Issue 14: a run killed in the middle of an epoch goes on from its last checkpoint, in a new process, and ends
bit-identical to the run that was never stopped; checkpoints from another run are refused."""
import os, random, shutil, signal
from pathlib import Path
import pytest, torch
from fastai.callback.core import Callback
from fastai.test_utils import synth_learner
from fastai_repro.all import ReproducibleCallback, RunRecord, RecordError, compare, weights_equal
from fastai_repro.checkpoint import checkpoints
from helpers import in_new_processes, run_script
import ckpt_job

KILLED = -signal.SIGKILL

def outcome(folder:Path, mode:str) -> dict:
    "What a job wrote: final weights, the Recorder's values, the record"
    out = torch.load(folder/f'{mode}.pth', weights_only=True)
    return {**out, 'record': RunRecord.from_bytes(out['record'])}

def assert_same_run(a:dict, b:dict):
    "Every weight bit-identical, the same epoch values, and records `compare` calls the same"
    assert a['weights'].keys() == b['weights'].keys()
    for k in a['weights']: assert torch.equal(a['weights'][k], b['weights'][k]), f'{k} differs'
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
    learn = synth_learner(n_trn=10, cbs=cb, **kw) # 10 batches of 16
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(n_epoch)
    return learn

class Crash(Callback):
    "Raises as training batch 4 of epoch 1 begins, while `Crash.on`: a switch, not a setting"
    on = False
    def before_batch(self):
        if Crash.on and self.training and (self.epoch, self.iter) == (1, 4): raise RuntimeError('out of memory')

def test_resume_in_one_process_with_or_without_a_progress_bar(tmp_path):
    "A synthetic fit that crashed goes on from its checkpoint; the progress bar of the first run may be gone"
    full = fit_synth([ReproducibleCallback(21, compare_previous=False), Crash()])
    learn = synth_learner(n_trn=10, cbs=[ReproducibleCallback(21, checkpoint_every=3, checkpoint_dir=tmp_path), Crash()])
    Crash.on = True
    try:
        with learn.no_logging(), pytest.raises(RuntimeError, match='out of memory'): learn.fit_one_cycle(2) # with its bar
    finally: Crash.on = False
    assert [p.name for p in checkpoints(tmp_path)][-1] == 'fit000-epoch0001-batch000002.ckpt'
    resumed = fit_synth([ReproducibleCallback(21, resume_from=tmp_path), Crash()])
    assert weights_equal(full.model, resumed.model) and full.recorder.values == resumed.recorder.values
    assert compare(full.reproducible.record, resumed.reproducible.record).same

def test_checkpoints_kept_and_atomic(tmp_path):
    fit_synth(ReproducibleCallback(21, checkpoint_every=3, checkpoint_dir=tmp_path, keep=2))
    names = sorted(os.listdir(tmp_path))
    assert names == ['fit000-epoch0001-batch000008.ckpt', 'fit000-epoch0001-batch000010.ckpt'], names
    (tmp_path/'.fit000-epoch0001-batch000012.ckpt.x1.tmp').write_bytes(b'half a checkpoint') # killed while writing
    assert [p.name for p in checkpoints(tmp_path)] == names[-2:]
    data = (tmp_path/names[-1]).read_bytes()
    (tmp_path/names[-1]).write_bytes(data[:len(data) // 3])
    with pytest.raises(RecordError, match='not a readable checkpoint'): ReproducibleCallback(21, resume_from=tmp_path)

def test_a_checkpoint_from_another_run_is_refused(tmp_path):
    fit_synth(ReproducibleCallback(21, checkpoint_dir=tmp_path))
    with pytest.raises(ValueError, match='seed 21, not 22'): ReproducibleCallback(22, resume_from=tmp_path)
    for why, change in (('data set', dict(n_epoch=2, n_trn=5)), ('fit call', dict(n_epoch=3)),
                        ('model', dict(n_epoch=2, model=torch.nn.Sequential(torch.nn.Linear(1, 1))))):
        kw = {k: v for k, v in change.items() if k != 'n_epoch'}
        learn = synth_learner(n_trn=kw.pop('n_trn', 10), cbs=ReproducibleCallback(21, resume_from=tmp_path), **kw)
        with pytest.raises(ValueError, match=f'from another {why}: fit 0 differs'), learn.no_bar(), learn.no_logging():
            learn.fit_one_cycle(change['n_epoch'])

def test_bad_checkpoint_settings_are_refused_at_once(tmp_path):
    with pytest.raises(ValueError, match='checkpoint_every=5 needs checkpoint_dir'):
        ReproducibleCallback(21, checkpoint_every=5)
    with pytest.raises(ValueError, match='keep must be an int >= 1, got 0'):
        ReproducibleCallback(21, checkpoint_dir=tmp_path, keep=0)
    with pytest.raises(ValueError, match='need isolate_data=True'):
        ReproducibleCallback(21, checkpoint_dir=tmp_path, isolate_data=False)
    with pytest.raises(ValueError, match='does not exist'): ReproducibleCallback(21, resume_from=tmp_path/'nothing')
    with pytest.raises(ValueError, match='no checkpoint in this folder'): ReproducibleCallback(21, resume_from=tmp_path)
