"""Issue 23: what one checkpoint costs, early in a run and at batch 6,000, when every checkpoint held the whole record.

    python bench/checkpoint_cost.py [ROUNDS]

A tiny model (fastai's `RegModel`, 2 weights) on synthetic data, one epoch of 6,000 training batches, a checkpoint
every 500 batches, every batch recorded. Each checkpoint is timed from the callback's decision to take it to the
file renamed into place (its record rows flushed, its state taken, hashed, saved, synced). Prints, for each round,
the time of the checkpoints at batches 500 and 1,000 and at 5,500 and 6,000 (the one after the epoch), and the size
of the last file; then the medians over the rounds. Run it with `PYTHONPATH` set to another checkout to measure that."""
import statistics, sys, tempfile, time, warnings; warnings.simplefilter('ignore')
from pathlib import Path
import fastai.callback.schedule  # noqa: F401
from fastai.test_utils import synth_learner
from fastai_repro.all import ReproducibleCallback
from fastai_repro.callback import ReproducibleCallback as CB

times:list = []
_checkpoint = CB._checkpoint
def timed(self, sc, batch):
    "The callback's `_checkpoint`, timed"
    t = time.perf_counter(); _checkpoint(self, sc, batch); times.append((batch, time.perf_counter() - t))
CB._checkpoint = timed

def one_round() -> dict:
    "One epoch of 6,000 batches with a checkpoint every 500: the checkpoints' times by batch, the last file's size"
    times.clear()
    folder = Path(tempfile.mkdtemp())
    learn = synth_learner(n_trn=6000, cbs=ReproducibleCallback(21, checkpoint_every=500, checkpoint_dir=folder, keep=1))
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    size = max(p.stat().st_size for p in folder.glob('*.ckpt'))
    return dict(times, size=size)

rounds = [one_round() for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3)]
for r in rounds: print('  '.join(f'batch {b}: {r[b] * 1000:6.1f} ms' for b in (500, 1000, 5500, 6000)),
                       f' last file {r["size"] / 1e6:.2f} MB')
print('median', '  '.join(f'batch {b}: {statistics.median(r[b] for r in rounds) * 1000:6.1f} ms'
                          for b in (500, 1000, 5500, 6000)))
