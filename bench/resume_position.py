"""Issue 14, item 4: resuming at batch 10 and at batch 200 of an epoch cost the same; replaying the loader up to the
batch (MosaicML Composer's "spin") costs time in proportion to the position.

    python bench/resume_position.py

One epoch of a small model on the 1797 digits at 16 px, batches of 4 (359 training batches), with a checkpoint every
10 batches. Then, interleaved, 5 times: a new learner resumes from the checkpoint before batch 10 and the one before
batch 200 (timed from building the callback, which reads the checkpoint, to the start of the first resumed batch),
and the loader is iterated up to batch 10 and up to batch 200 (what a replay must do before it can train). `start 0`
is a fresh run timed the same way, to its first batch: the cost of starting at all.
Prints each time and the medians."""
import statistics, tempfile, time, warnings; warnings.simplefilter('ignore')
from pathlib import Path
from torch import nn
from fastai.callback.core import Callback, CancelFitException
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai_repro.all import ReproducibleCallback, make_digits_folder, digits_dls
from fastai_repro.checkpoint import checkpoints

class FirstBatch(Callback):
    "While `FirstBatch.on`: notes when the first training batch begins, then stops the fit"
    order, on = 100, False
    def before_batch(self):
        if FirstBatch.on and self.training: self.at = time.perf_counter(); raise CancelFitException()

def learner(cb) -> Learner:
    "A small model on the digits, with `cb`"
    dls = digits_dls(data, seed=21, size=16, bs=4)
    return Learner(dls, nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2)), loss_func=CrossEntropyLossFlat(),
                   cbs=[cb, FirstBatch()])

def at(batch:int) -> Path:
    "The checkpoint from which the run goes on with training batch `batch` of epoch 0"
    return next(p for p in checkpoints(ck) if p.name.endswith(f'-fit000-epoch0000-batch{batch:06d}.ckpt'))

def resume(batch:int) -> float:
    "Seconds from building the callback (resuming from the checkpoint before `batch` unless 0) to that batch's start"
    t = time.perf_counter()
    learn = learner(ReproducibleCallback(21, resume_from=at(batch) if batch else None))
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert learn.iter == batch
    return learn.first_batch.at - t

def replay(batch:int) -> float:
    "Seconds to iterate the training loader up to batch `batch`, as a replay does before training"
    dl = digits_dls(data, seed=21, size=16, bs=4).train
    t = time.perf_counter()
    for i, _ in zip(range(batch), dl): pass
    return time.perf_counter() - t

root = Path(tempfile.mkdtemp())
data, ck = make_digits_folder(root/'digits', size=16), root/'ck'
first = learner(ReproducibleCallback(21, checkpoint_every=10, checkpoint_dir=ck, keep=100))
with first.no_bar(), first.no_logging(): first.fit(1)
FirstBatch.on = True
print(f'{len(first.dls.train)} training batches; checkpoints: {len(list(ck.iterdir()))}')
times = {k: [] for k in ('start 0', 'resume 10', 'resume 200', 'replay 10', 'replay 200')}
for rep in range(5):
    for k, f in (('start 0', lambda: resume(0)), ('resume 10', lambda: resume(10)), ('resume 200', lambda: resume(200)),
                 ('replay 10', lambda: replay(10)), ('replay 200', lambda: replay(200))):
        times[k].append(f())
med = {k: statistics.median(v) for k, v in times.items()}
for k, v in times.items(): print(f'{k:>10}: median {med[k] * 1000:7.1f} ms  ({", ".join(f"{x * 1000:.1f}" for x in v)})')
print(f"ratio resume 200 / resume 10: {med['resume 200'] / med['resume 10']:.2f}; "
      f"replay 200 / replay 10: {med['replay 200'] / med['replay 10']:.2f}")
