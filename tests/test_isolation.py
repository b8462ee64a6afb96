"""Tweak isolation and exact resume: with ReproducibleCallback every batch depends on (seed, fit, epoch, index) and
the data pipeline only, and a run resumed from a checkpoint in another process ends bit-identical."""
import shutil, subprocess, sys
from pathlib import Path
import pytest, torch
from torch import nn
from fastai.callback.mixup import MixUp
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai_repro.all import ReproducibleCallback, compare

def model(dropout=False):
    layers = [nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers, *([nn.Dropout(0.3)] if dropout else []), nn.Linear(8, 2))

def run(new_dls, isolate=True, dropout=False, mixup=False, lr=1e-3, **dls_kw):
    dls = new_dls(**dls_kw)
    cb = ReproducibleCallback(21, isolate_data=isolate, compare_previous=False) # before the model: init covered
    learn = Learner(dls, model(dropout), loss_func=CrossEntropyLossFlat(), cbs=[cb] + ([MixUp()] if mixup else []))
    with learn.no_bar(), learn.no_logging(): learn.fit(2, lr)
    return learn.reproducible.record

def same_batches(a, b) -> bool:
    "Identical input and target digests at every train and valid batch"
    cols = ['fit', 'epoch', 'phase', 'iter', 'inputs', 'targets']
    return len(a.rows) > 0 and a.batches[cols].equals(b.batches[cols])

@pytest.mark.parametrize('change', ['dropout', 'mixup'])
def test_model_change_keeps_the_data(new_dls, change):
    base = run(new_dls)
    assert same_batches(base, run(new_dls, **{change: True}))
    assert not same_batches(run(new_dls, isolate=False), run(new_dls, isolate=False, **{change: True}))

def test_dropout_report_names_only_the_architecture(new_dls):
    c = compare(run(new_dls), run(new_dls, dropout=True))
    assert c.causes == ['architecture']
    assert c.components['inputs'] and c.components['targets'] and c.components['split'] and c.components['dataloader']

def test_num_workers_0_and_2_give_the_same_batches(new_dls):
    assert same_batches(run(new_dls, num_workers=0), run(new_dls, num_workers=2))
    assert not same_batches(run(new_dls, isolate=False, num_workers=0), run(new_dls, isolate=False, num_workers=2))

def test_learning_rates_keep_the_data(new_dls):
    "A learning rate draws nothing, so without isolation the batches match too: this guards the keys, not the streams"
    a, b = run(new_dls, lr=1e-3), run(new_dls, lr=3e-3)
    assert same_batches(a, b)
    assert a.fits[0]['final_weights'] != b.fits[0]['final_weights']

def jobs(folder, callback, *modes):
    for m in modes:
        r = subprocess.run([sys.executable, str(Path(__file__).parent/'resume_job.py'), m, str(folder), str(int(callback))],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
    return [torch.load(folder/f'{m}.pth') for m in modes]

def equal(a, b): return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

@pytest.fixture
def job_folder(small_digits, tmp_path):
    "The small digits (192 images of 16 px), copied where the jobs save their checkpoints"
    shutil.copytree(small_digits, tmp_path/'digits')
    return tmp_path

@pytest.mark.parametrize('prefix', ['', 'ft_'])
def test_exact_resume_in_new_processes(job_folder, prefix):
    full, _, resumed = jobs(job_folder, True, f'{prefix}full', f'{prefix}first', f'{prefix}resume')
    assert equal(full, resumed)
    full, _, resumed = jobs(job_folder, False, f'{prefix}full', f'{prefix}first', f'{prefix}resume')
    assert not equal(full, resumed)
