"""What `learn.reproducible.explain(epoch, batch)` costs (issue 28, item 3) on top of the replay it starts with, and
what keeping the model's buffers costs `on_anomaly='stop'`/`'skip'` each training batch.

    python bench/explain_cost.py

`cnn_learner(resnet18)` on 384 digits at 32 px, bs=8, `fit(2)` with a checkpoint every 40 training batches (as
`bench/replay_cost.py`). Batch 32 + d of epoch 1 (d = 0 and 8) is replayed and explained, with each item's gradient norm
(`item_grads=16`, the default: all 8 items) and without (`item_grads=0`), three times each, in turn (median). The
buffer copy is timed on resnet18's buffers (best of 5 runs of 50)."""
import statistics, time, timeit, warnings; warnings.simplefilter('ignore')
from fastai_repro.anomaly import AnomalyWatch
from replay_cost import trained # the same run

learn = trained()

def timed(f) -> float:
    "Seconds `f()` takes"
    t = time.perf_counter(); f(); return time.perf_counter() - t

for d in (0, 8):
    runs = {'replay': [], 'explain, item_grads=0': [], 'explain, item_grads=16': []}
    for _ in range(3): # in turn
        runs['replay'].append(timed(lambda: learn.reproducible.replay(1, 32 + d)))
        runs['explain, item_grads=0'].append(timed(lambda: learn.reproducible.explain(1, 32 + d, item_grads=0)))
        runs['explain, item_grads=16'].append(timed(lambda: learn.reproducible.explain(1, 32 + d)))
    a = learn.reproducible.explain(1, 32 + d)
    print(f'd={d}: ' + '; '.join(f'{k} {statistics.median(v):.2f} s' for k, v in runs.items()) + f'; {a.verdict[:50]}')

w, model = AnomalyWatch('skip'), learn.model
n_buf = sum(b.numel() for b in model.buffers())
w.before(model) # the first call allocates the copies; each later one copies into them
ms = min(timeit.repeat(lambda: w.before(model), number=50, repeat=5)) / 50 * 1e3
print(f"the buffers kept before each training batch ('stop', 'skip'): {len(list(model.buffers()))} buffers, "
      f'{n_buf} values: {ms:.3f} ms a batch')
