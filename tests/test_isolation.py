"""Tweak isolation and exact resume: with ReproducibleCallback every batch depends on (seed, fit, epoch, index) and
the data pipeline only, and a run resumed from a checkpoint in another process ends bit-identical."""
import shutil
import pytest, torch
from torch import nn
from fastai.callback.mixup import MixUp
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai_repro.all import ReproducibleCallback, compare
from helpers import in_new_processes, same_tensors
import resume_job

def model(dropout=False):
    "A small image classifier, with a Dropout before its last layer or not"
    layers = [nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers, *([nn.Dropout(0.3)] if dropout else []), nn.Linear(8, 2))

def run(new_dls, isolate=True, dropout=False, mixup=False, lr=1e-3, **dls_kw):
    "Two quiet epochs of `model` with the callback (and `MixUp` or not); the record"
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

def jobs(folder, prefix:str) -> dict:
    """The full run, the first epoch and the resumed rest, each in a new process, with the callback and without (a
    resume in a new interpreter, its own hash seed, is in `test_resume_anywhere.py::test_killed_at_a_random_batch`)"""
    modes = [(f'{prefix}{m}', cb) for m in ('full', 'first', 'resume') for cb in (True, False)]
    for cb in (True, False): shutil.copytree(folder/'digits', folder/str(cb)/'digits')
    in_new_processes(*[(resume_job.main, m, str(folder/str(cb)), cb) for m, cb in modes[:4]]) # full and first
    in_new_processes(*[(resume_job.main, m, str(folder/str(cb)), cb) for m, cb in modes[4:]]) # from the checkpoints
    return {(m.removeprefix(prefix), cb): torch.load(folder/str(cb)/f'{m}.pth') for m, cb in modes}

@pytest.fixture
def job_folder(small_digits, tmp_path):
    "The small digits (192 images of 16 px), copied where the jobs save their checkpoints"
    shutil.copytree(small_digits, tmp_path/'digits')
    return tmp_path

@pytest.mark.parametrize('prefix', ['', 'ft_'])
def test_exact_resume_in_new_processes(job_folder, prefix):
    runs = jobs(job_folder, prefix)
    assert same_tensors(runs['full', True], runs['resume', True])
    assert not same_tensors(runs['full', False], runs['resume', False])
