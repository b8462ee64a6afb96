"Shared pieces of the end-to-end tests: a small real data set and one training run of the pets notebook"
import multiprocessing, os, random, subprocess, sys, tempfile, time, traceback, warnings
from contextlib import contextmanager
from pathlib import Path
import numpy as np, torch
import torch.nn.functional as F
from torch import nn
import fastai.callback.schedule  # noqa: F401  (fine_tune, lr_find)
from fastai.callback.core import Callback
from fastai.learner import Learner, Recorder
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import error_rate
from fastai.vision.learner import cnn_learner
from fastai.vision.models import resnet18
from fastai_repro.all import ReproducibleCallback, fit_kind, weights_equal

# 480 images: 6 training batches of 64 (a stray draw at batch 5 has one to land in); 16 pixels: a quarter of 32's work
N_IMAGES, SIZE, LR_FIND_ITERS = 480, 16, 12

class Trace(Callback):
    "Keeps every training loss and every epoch's metrics row, to compare runs exactly"
    order = Recorder.order + 1
    def before_fit(self):
        if not hasattr(self, 'losses'): self.losses, self.rows, self.n_batches = [], [], 0
        self.on = fit_kind(self.learn) == 'train' # not lr_find, validate or get_preds
    def after_batch(self):
        if self.on: self.n_batches += 1
        if self.on and self.training: self.losses.append(self.learn.loss.detach().clone())
    def after_epoch(self):
        if self.on: self.rows.append(list(self.recorder.values[-1]))

def scramble():
    "Fresh OS entropy in Python's, NumPy's and torch's global generators: what an unseeded process would hold"
    seed = int.from_bytes(os.urandom(4), 'little')
    random.seed(seed); np.random.seed(seed); torch.manual_seed(seed)

def repro_cbs(callback=True, seed=21, compare_previous=False) -> list:
    "`ReproducibleCallback(seed)` (or not) and a `Trace`"
    return ([ReproducibleCallback(seed, compare_previous=compare_previous)] if callback else []) + [Trace()]

def make_learner(dls, callback=True, seed=21, compare_previous=False, cbs=(), **kwargs):
    "`cnn_learner(dls, resnet18, pretrained=False)` as in the pets notebook, with the callback or without; `cbs` added"
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn = cnn_learner(dls, resnet18, pretrained=False, metrics=error_rate,
                            cbs=repro_cbs(callback, seed, compare_previous) + list(cbs), **kwargs)
    learn.path = dls.path
    return learn

def train(dls, callback=True, lr_find=False, seed=21):
    "One run of the pets notebook: optionally `lr_find`, then `fine_tune(1)`"
    learn = make_learner(dls, callback, seed)
    with quiet(learn):
        if lr_find: learn.suggestion = learn.lr_find(show_plot=False, num_it=LR_FIND_ITERS)
        learn.fine_tune(1)
    return learn

@contextmanager
def quiet(learn):
    "No progress bar and no printed metrics"
    with learn.no_bar(), learn.no_logging(): yield learn

def quiet_fit(learn, n_epoch=1, *args, how='fit', **kwargs):
    "`learn.fit(n_epoch, *args, **kwargs)` (or the method named `how`) with no progress bar or printed metrics"
    with quiet(learn): getattr(learn, how)(n_epoch, *args, **kwargs)
    return learn

def fit_record(learn, n_epoch=1, **kwargs):
    "`quiet_fit(learn, n_epoch, **kwargs)`, and the record of the learner's `ReproducibleCallback`"
    return quiet_fit(learn, n_epoch, **kwargs).reproducible.record

def fit_x_fit(learn, between=None, fit=lambda learn: learn.fit(1)):
    "Quietly `fit(learn)`, then `between(learn)` (unless None), then `fit(learn)` again; the learner"
    with quiet(learn):
        fit(learn)
        if between is not None: between(learn)
        fit(learn)
    return learn

def small_cnn():
    "A small image classifier with Dropout (it draws random numbers in training)"
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Dropout(0.2), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 2))

def vision_learner_on(dls, cbs=None):
    "A `Learner` with `small_cnn` on the digits loaders"
    return Learner(dls, small_cnn(), loss_func=CrossEntropyLossFlat(), cbs=cbs)

class Tracer(Callback):
    "Keeps the name of every event the learner sends, in order"
    order = 99
    def __init__(self): self.events = []
    def __call__(self, event_name):
        self.events.append(event_name)
        return super().__call__(event_name)

def mse_metric(out, targ):
    "A metric that is the loss itself"
    return F.mse_loss(out, targ)

def close(a, b, eps=1e-5) -> bool:
    "Element-wise closeness of numbers, lists or tensors"
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), atol=eps,
                          rtol=eps)

def same_tensors(a:dict, b:dict) -> bool:
    "Same keys, every tensor bit-identical (`torch.equal`): `weights_equal` for `state_dict`s saved or loaded"
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

def assert_same_tensors(a:dict, b:dict):
    "`same_tensors(a, b)` as assertions, naming the first key whose tensors differ"
    assert a.keys() == b.keys()
    for k in a: assert torch.equal(a[k], b[k]), f'{k} differs'

def same_run(a, b) -> bool:
    "Bit-identical final weights, training losses and epoch metrics"
    ta, tb = a.trace, b.trace
    return (weights_equal(a.model, b.model) and len(ta.losses) == len(tb.losses)
            and all(torch.equal(x, y) for x, y in zip(ta.losses, tb.losses)) and ta.rows == tb.rows)

def assert_same(a, b):
    "Every `state_dict` tensor bit-identical (`torch.equal`), and the recorded losses and metrics too"
    assert_same_tensors(a.model.state_dict(), b.model.state_dict())
    assert same_run(a, b)

PRELOAD = ['fastai_repro.all', 'fastai.vision.learner', 'fastai.callback.schedule'] # what the jobs import: fastai

def _job(fn, args:tuple, err:str):
    "Runs `fn(*args)` in the new process; a failure's traceback goes to the file `err`, since stderr is the server's"
    os.environ['CUDA_VISIBLE_DEVICES'] = '' # CPU runs, as on the machines that run the tests
    try: fn(*args)
    except BaseException:
        Path(err).write_text(traceback.format_exc())
        raise SystemExit(1)

def in_new_processes(*calls, timeout:int=600, exitcodes:tuple|None=None):
    """Runs each `(fn, *args)` of `calls` in a new process, all at once; fails with the traceback of one that failed.
    The processes are forked by multiprocessing's forkserver, a server that has only imported `PRELOAD`: each starts as
    a fresh `python` is after those imports, without the ten seconds importing fastai takes. Unlike separate
    interpreters, they share the server's `str` hash seed; where that matters, run a script (`run_script`).
    `exitcodes`: what each process must end with (default 0; `-signal.SIGKILL` for one that kills itself)."""
    ctx = multiprocessing.get_context('forkserver')
    ctx.set_forkserver_preload(PRELOAD) # read when this process starts its server, the first time
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        errs = [Path(tmp)/f'{i}.txt' for i in range(len(calls))]
        try:
            for (fn, *args), e in zip(calls, errs):
                procs.append(ctx.Process(target=_job, args=(fn, tuple(args), str(e))))
                procs[-1].start()
            deadline = time.monotonic() + timeout
            for p in procs: p.join(max(0., deadline - time.monotonic()))
            assert not any(p.is_alive() for p in procs), f'jobs still running after {timeout} s: {calls}'
        finally:
            for p in procs:
                if p.is_alive(): p.kill(); p.join()
        for (fn, *args), p, e, code in zip(calls, procs, errs, exitcodes or [0] * len(calls)):
            why = e.read_text()[-5000:] if e.exists() else f'exit code {p.exitcode}'
            assert p.exitcode == code, f'{fn.__name__}{tuple(args)} failed (wanted exit code {code}):\n{why}'

def run_script(path:Path, *args, timeout:int=600, env:dict|None=None):
    "Runs `python path *args` in a new interpreter (its own hash seed, its own imports); fails with its stderr"
    r = subprocess.run([sys.executable, str(path), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, 'CUDA_VISIBLE_DEVICES': '', **(env or {})})
    assert r.returncode == 0, f'{path.name} {args} failed:\n{r.stderr[-5000:]}'

GPU_ENV = 'FASTAI_REPRO_TEST_GPU' # `1`: torchrun jobs see the GPUs (NCCL): `bench/gpu_check.py`'s distributed check

def torchrun(job:Path, *args, nproc:int=2, timeout:int=600) -> subprocess.CompletedProcess:
    "Run `job *args` on `nproc` CPU processes with torchrun (gloo; GPUs with `GPU_ENV`); on a timeout, kill them all"
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(nproc), str(job),
           *map(str, args)]
    gpus = {} if os.environ.get(GPU_ENV) == '1' else {'CUDA_VISIBLE_DEVICES': ''}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         env={**os.environ, **gpus})
    try: stdout, stderr = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        raise
    return subprocess.CompletedProcess(cmd, p.returncode, stdout, stderr)
