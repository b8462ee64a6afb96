"""Issue 23: checkpoints that never resume wrong without a word and never destroy another run's files: a checkpoint
of a fit the script does not reach, positions that disagree with the record, flipped bits, two runs in one folder,
other tensors of the same size; and the weak points mended (foreign files, half-written files, `keep` over a
resume, workers, skipped fits' callbacks, a full disk)."""
import errno, gc, pickle, subprocess, sys, textwrap, warnings
from pathlib import Path
import pytest, torch
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders, TfmdDL
from fastai.learner import Learner
from fastai.losses import MSELossFlat
from functools import partial
from fastai.optimizer import SGD
from fastai.test_utils import RegModel, synth_dbunch
from fastai_repro import checkpoint as ckmod
from fastai_repro.all import (ReproducibleCallback, ReproducibilityError, ReproducibilityWarning, RecordError,
                              weights_equal)
from fastai_repro.checkpoint import checkpoints, read_checkpoint

class Crash(Callback):
    "Raises as training batch `at` (fit, epoch, batch) begins, while `Crash.at` is set: a switch, not a setting"
    at = None
    def before_fit(self): self.n = getattr(self, 'n', -1) + 1
    def before_batch(self):
        if self.training and (self.n, self.epoch, self.iter) == Crash.at: raise RuntimeError('preempted')

def learner(cb, dls=None, lr=1e-3, cbs=()) -> Learner:
    "A small regression learner, 10 training batches an epoch, with `cb`, a `Crash` switch and `cbs`"
    return Learner(dls or synth_dbunch(n_train=10), RegModel(), loss_func=MSELossFlat(), lr=lr,
                   opt_func=partial(SGD, mom=0.9), cbs=[cb, Crash(), *cbs])

def script(learn, fits:int=2):
    "What the user's script runs: `fit_one_cycle(2)`, then (with `fits=2`) `fit(2)`"
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(2)
        if fits == 2: learn.fit(2)
    return learn

def crashed(folder, at=(1, 0, 4), cbs=(), **kw) -> Path:
    "Run `script` with checkpoints every 3 batches into `folder` until it crashes at `at`; the latest checkpoint"
    Crash.at = at
    try:
        with pytest.raises(RuntimeError, match='preempted'):
            script(learner(ReproducibleCallback(21, checkpoint_every=3, checkpoint_dir=folder, **kw), cbs=cbs))
    finally: Crash.at = None
    return checkpoints(folder)[-1]

def edited(path:Path, sign:bool=True, **position) -> Path:
    "A copy of checkpoint `path` with its position changed; with `sign`, its digest made again, as an editor could"
    ck = torch.load(path, weights_only=True)
    ck['position'].update(position)
    if sign and hasattr(ckmod, 'checkpoint_digest'): ck['digest'] = ckmod.checkpoint_digest(ck)
    out = path.parent.parent/'edited'/path.name # under a checkpoint's name, outside the run's folder
    out.parent.mkdir(exist_ok=True)
    torch.save(ck, out)
    return out

# --- bug 1: a checkpoint of a fit the script does not reach ---------------------------------------------------------
def test_a_checkpoint_in_a_fit_never_reached_is_an_error(tmp_path):
    "Killed in fit 1 of `fit_one_cycle(2); fit(2)`; the resumed script runs only `fit_one_cycle(2)`"
    ck = crashed(tmp_path/'ck')
    learn = script(learner(ReproducibleCallback(21, resume_from=ck)), fits=1) # fit 0 is skipped: it ended before
    assert 'values' not in learn.recorder.__dict__ # untrained: its Recorder never began
    with pytest.raises(ReproducibilityError, match=r'taken in fit 1 \(fit\(n_epoch=2.*nothing was restored'):
        learn.validate()
    # the contrast: the whole script, resumed, ends as the run that was never stopped
    full = script(learner(ReproducibleCallback(21, compare_previous=False)))
    resumed = script(learner(ReproducibleCallback(21, resume_from=ck)))
    assert weights_equal(full.model, resumed.model) and full.recorder.values == resumed.recorder.values
    resumed.validate() # reached: nothing to say
    del learn; gc.collect() # the untrained learner is gone: nothing to say at exit either

def test_a_script_that_stops_before_the_checkpoint_says_so(tmp_path):
    "In a new interpreter: the script ends after the skipped fit; at exit it says that nothing was restored"
    ck = crashed(tmp_path/'ck')
    code = textwrap.dedent(f'''
        import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_checkpoint_edges import learner, script
        from fastai_repro.all import ReproducibleCallback
        learn = script(learner(ReproducibleCallback(21, resume_from={str(ck)!r})), fits=1)
        import gc; gc.collect() # the learner lives on in the script: collecting changes nothing
        print('script done')''')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert 'script done' in r.stdout, r.stderr
    assert 'ReproducibleCallback: error: resume_from=' in r.stderr and 'model is untrained' in r.stderr, r.stderr

# --- bug 2: a position that disagrees with itself, the record or the epoch ------------------------------------------
@pytest.mark.parametrize('change,why', [(dict(batch=999), 'impossible'), (dict(batch=-3), 'impossible'),
                                        (dict(epoch=99), 'impossible'), (dict(fit=5), 'record holds 2 fits'),
                                        (dict(batch=5), 'holds train batch 5 of epoch 0'),
                                        (dict(n_epoch=3), 'its position says 3 epochs')])
def test_a_position_that_disagrees_is_refused(tmp_path, change, why):
    ck = crashed(tmp_path/'ck', at=(1, 0, 7)) # the latest checkpoint: before batch 6 of fit 1's epoch 0
    assert ck.name.endswith('fit001-epoch0000-batch000006.ckpt')
    with pytest.raises(RecordError, match=why): ReproducibleCallback(21, resume_from=edited(ck, **change))
    with pytest.raises(RecordError, match='do not match the digest'): # the same edit, not signed again
        ReproducibleCallback(21, resume_from=edited(ck, sign=False, **change))

# --- bug 3: a flipped bit anywhere --------------------------------------------------------------------------------
def test_a_flipped_bit_in_any_tensor_is_refused(tmp_path):
    ck = crashed(tmp_path/'ck')
    n = 0
    for where in ('model', 'opt', 'callbacks'):
        st = torch.load(ck, weights_only=True)
        ts, todo = [], [st['state'][where]]
        while todo: # every tensor of that part of the state
            o = todo.pop()
            if isinstance(o, torch.Tensor) and o.numel(): ts.append(o)
            elif isinstance(o, dict): todo += o.values()
            elif isinstance(o, (list, tuple)): todo += o
        assert ts, where
        ts[-1].reshape(-1).view(torch.uint8)[-1] ^= 1 # the lowest bit of its last byte
        out = tmp_path/f'flipped-{where}.ckpt'
        torch.save(st, out)
        with pytest.raises(RecordError, match='do not match the digest'): read_checkpoint(out)
        n += 1
    assert n == 3
    read_checkpoint(ck) # the contrast: the file as written reads

# --- bug 4: two runs in one folder ----------------------------------------------------------------------------------
def test_runs_sharing_a_folder_keep_each_others_files(tmp_path):
    "Run A (seed 21) crashes; run B (seed 22) writes into the same folder, keep=3; A's files stay, A resumes"
    folder = tmp_path/'ck'
    crashed(folder)
    mine = {p.name: p.read_bytes() for p in checkpoints(folder)}
    learn = learner(ReproducibleCallback(22, checkpoint_every=3, checkpoint_dir=folder, keep=3))
    with warnings.catch_warnings():
        warnings.simplefilter('error', ReproducibilityWarning) # another seed's files: nothing to warn about
        script(learn)
    assert {p.name: p.read_bytes() for p in checkpoints(folder, seed=21)} == mine # not overwritten, not deleted
    assert len(checkpoints(folder, seed=22)) == 3
    full = script(learner(ReproducibleCallback(21, compare_previous=False)))
    assert weights_equal(full.model, script(learner(ReproducibleCallback(21, resume_from=folder))).model)

def test_the_run_that_wrote_last_is_resumed(tmp_path):
    "An earlier run of the same seed (another learning rate) finished in the folder; this run's newer ones win"
    folder = tmp_path/'ck'
    script(learner(ReproducibleCallback(21, checkpoint_every=3, checkpoint_dir=folder), lr=1e-2))
    Crash.at = (1, 0, 4)
    try:
        with pytest.raises(RuntimeError), pytest.warns(ReproducibilityWarning,
                                                       match='also holds checkpoints of another run'):
            script(learner(ReproducibleCallback(21, checkpoint_every=3, checkpoint_dir=folder)))
    finally: Crash.at = None
    assert len({p.name.split('-fit')[0] for p in checkpoints(folder)}) == 2 # both runs' files
    full = script(learner(ReproducibleCallback(21, compare_previous=False)))
    assert weights_equal(full.model, script(learner(ReproducibleCallback(21, resume_from=folder))).model)

# --- bug 5: other tensors of the same size --------------------------------------------------------------------------
def test_other_tensors_of_the_same_size_are_refused(tmp_path):
    "A `TensorDataset`'s contents are in the data check: data drawn with another seed is another data set"
    torch.manual_seed(1); dls = synth_dbunch(n_train=10)
    crashed(tmp_path/'ck') # synth_dbunch draws its data: the crashed run's are not those of `dls`
    with pytest.raises(ValueError, match='from another data set: fit 0 differs in items'):
        learner(ReproducibleCallback(21, resume_from=tmp_path/'ck'), dls=dls)

class Plain(torch.utils.data.Dataset):
    "16 items, neither `.items` nor `.tensors`: what the data check can see is their number"
    def __len__(self): return 16
    def __getitem__(self, i): return torch.tensor([float(i)]), torch.tensor([2. * i])

def test_data_the_check_cannot_see_is_said(tmp_path):
    dls = lambda: DataLoaders(TfmdDL(Plain(), bs=4, shuffle=True), TfmdDL(Plain(), bs=4))
    learn = learner(ReproducibleCallback(21, checkpoint_dir=tmp_path/'ck'), dls=dls())
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    with pytest.warns(ReproducibilityWarning, match='checks the data set only by its number of items: a Plain'):
        learner(ReproducibleCallback(21, resume_from=tmp_path/'ck'), dls=dls())

# --- weak points -----------------------------------------------------------------------------------------------------
def test_foreign_files_are_refused_in_words(tmp_path):
    "A `learn.save` file, a pickle, a text file, a cut checkpoint: `RecordError`, never advice to load unsafely"
    learn = learner(ReproducibleCallback(21, compare_previous=False))
    learn.create_opt()
    saved = learn.save(tmp_path/'model', with_opt=True)
    (tmp_path/'pickle.ckpt').write_bytes(pickle.dumps(Plain()))
    (tmp_path/'text.ckpt').write_text('epoch 1, batch 5\n')
    data = crashed(tmp_path/'ck').read_bytes()
    (tmp_path/'cut.ckpt').write_bytes(data[:len(data) - 100])
    for p in (saved, tmp_path/'pickle.ckpt', tmp_path/'text.ckpt', tmp_path/'cut.ckpt'):
        with pytest.raises(RecordError, match='not a fastai_repro checkpoint') as e: read_checkpoint(p)
        msg = str(e.value)
        assert 'weights_only' not in msg and '\x1b' not in msg, msg

def test_half_written_files_go_and_keep_spans_a_resume(tmp_path):
    folder = tmp_path/'ck'
    last = crashed(folder, keep=3)
    tmp = folder/f'.{last.name}.a1b2c3.tmp'
    tmp.write_bytes(b'x' * 1000) # a kill while writing left it
    other = folder/'.seed22-00000000-fit000-epoch0000-batch000003.ckpt.x.tmp'
    other.write_bytes(b'y') # another run's, perhaps being written now: left alone
    script(learner(ReproducibleCallback(21, checkpoint_every=3, checkpoint_dir=folder, keep=3, resume_from=folder)))
    assert not tmp.exists() and other.exists()
    assert len(checkpoints(folder)) == 3, [p.name for p in checkpoints(folder)]

def test_other_workers_resume(tmp_path):
    "Only `num_workers` changed (0 to 1): the batches are keyed, the same; the resume goes on"
    def dls(workers):
        "The same synthetic data each time, in loaders of `workers` workers"
        torch.manual_seed(3); d = synth_dbunch(n_train=10)
        return DataLoaders(TfmdDL(d.train.dataset, bs=16, shuffle=True, num_workers=workers),
                           TfmdDL(d.valid.dataset, bs=16, num_workers=workers))
    Crash.at = (0, 1, 4)
    try:
        with pytest.raises(RuntimeError):
            script(learner(ReproducibleCallback(21, checkpoint_every=3, checkpoint_dir=tmp_path), dls=dls(0)), fits=1)
    finally: Crash.at = None
    full = script(learner(ReproducibleCallback(21, compare_previous=False), dls=dls(0)), fits=1)
    resumed = script(learner(ReproducibleCallback(21, resume_from=tmp_path), dls=dls(1)), fits=1)
    assert weights_equal(full.model, resumed.model)

class Seen(Callback):
    "Every event it is sent, as (training fit, event)"
    def __init__(self): self.seen, self.n = [], -1
    def before_fit(self): self.n += 1; self.seen.append((self.n, 'before_fit'))
    def after_fit(self): self.seen.append((self.n, 'after_fit'))
    def after_cancel_fit(self): self.seen.append((self.n, 'after_cancel_fit'))

def test_a_skipped_fit_sends_no_event_to_other_callbacks(tmp_path):
    "A `SaveModelCallback` would load its best file at a skipped fit's end: no event of a skipped fit reaches it"
    ck = crashed(tmp_path/'ck', cbs=[Seen()])
    seen = Seen()
    script(learner(ReproducibleCallback(21, resume_from=ck), cbs=[seen]))
    assert seen.seen == [(0, 'before_fit'), (0, 'after_fit')], seen.seen # fit 1 only: numbered 0 by `Seen`

def test_a_full_disk_is_said_at_the_fit_end(tmp_path, monkeypatch):
    def full(*args, **kw):
        "A write to a full disk"
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(ckmod, 'write_checkpoint', full)
    learn = learner(ReproducibleCallback(21, checkpoint_every=3, checkpoint_dir=tmp_path))
    with pytest.warns(ReproducibilityWarning) as got: script(learn, fits=1)
    msgs = [str(w.message) for w in got if 'checkpoint' in str(w.message)]
    assert len(msgs) == 2 and 'No space left on device' in msgs[0], msgs
    assert '8 checkpoints of fit 0 were not written' in msgs[1] and 'the latest written is none' in msgs[1], msgs
