"""Issue 6: the callback beside fastai's own callbacks, schedules and applications.

Every scenario runs four times: twice with `ReproducibleCallback` (every `state_dict` tensor, loss and metric
bit-identical; the records equal, one row per batch, surviving a save and load) and twice without it (they differ).
"""
import random, warnings
from contextlib import nullcontext
import numpy as np, pandas as pd, pytest, torch
import fastai.callback.fp16  # noqa: F401  (Learner.to_fp16)
import fastai.callback.schedule  # noqa: F401  (fit_one_cycle, fit_flat_cos, fit_sgdr)
from fastai.callback.mixup import MixUp, CutMix
from fastai.callback.progress import CSVLogger, ShowGraphCallback
from fastai.callback.tracker import SaveModelCallback, EarlyStoppingCallback, ReduceLROnPlateau
from fastai.callback.training import GradientAccumulation
from fastai.collab import CollabDataLoaders, collab_learner
from fastai.data.transforms import RandomSplitter
from fastai.metrics import accuracy
from fastai.tabular.all import TabularPandas, tabular_learner, tabular_config, Normalize, CategoryBlock
from fastai.text.all import TextDataLoaders, text_classifier_learner, AWD_LSTM, awd_lstm_clas_config
from sklearn.datasets import load_breast_cancer
from fastai_repro.all import ReproducibilityWarning, RunRecord, compare
from helpers import make_learner, assert_same, same_run, same_tensors, repro_cbs, scramble

def check(build, train, tmp_path, bar=False):
    "Two runs with the callback bit-identical with equal, intact records; two runs without it differ"
    runs = {}
    for name, cb in (('a', True), ('b', True), ('c', False), ('d', False)):
        with warnings.catch_warnings():
            warnings.simplefilter('ignore') # CPU autocast notices and the like
            warnings.simplefilter('error', ReproducibilityWarning) # but any warning of the callback fails the test
            learn = build(cb)
            learn.path = tmp_path/name; learn.path.mkdir()
            with learn.no_logging(), (nullcontext() if bar else learn.no_bar()): train(learn)
        runs[name] = learn
    a, b = runs['a'], runs['b']
    assert_same(a, b)
    ra, rb = a.reproducible.record, b.reproducible.record
    assert len(ra.rows) == a.trace.n_batches > 0 and compare(ra, rb).same
    assert RunRecord.load(ra.save(tmp_path/'a.jsonl')) == ra
    assert not same_run(runs['c'], runs['d'])
    return runs

def fit1(learn):
    "The training of most scenarios: `fit_one_cycle(1)`"
    learn.fit_one_cycle(1)

VISION = {
    'MixUp': ([MixUp], fit1),
    'CutMix': ([CutMix], fit1),
    'GradientAccumulation': ([lambda: GradientAccumulation(n_acc=64)], fit1), # a step every 2 batches of 32
    'SaveModelCallback': ([lambda: SaveModelCallback(fname='best')], lambda l: l.fit_one_cycle(2)),
    'EarlyStopping': ([lambda: EarlyStoppingCallback(patience=0, min_delta=10)], lambda l: l.fit(3)), # stops after 2
    'ReduceLROnPlateau': ([lambda: ReduceLROnPlateau(patience=0, min_delta=10)], lambda l: l.fit(3)), # lower at epoch 3
    'CSVLogger': ([CSVLogger], fit1),
    'ShowGraphCallback': ([ShowGraphCallback], fit1),
    'to_fp16': ([], lambda l: l.to_fp16().fit_one_cycle(1)), # on a CPU fastai's autocast('cuda') and scaler turn off
    'fit_flat_cos': ([], lambda l: l.fit_flat_cos(1)),
    'fit_sgdr': ([], lambda l: l.fit_sgdr(2, 1)),
}

@pytest.mark.parametrize('name', list(VISION))
def test_vision_with(name, vision_dls, tmp_path):
    "On the small digits (192 images of 16 px): each scenario trains four times"
    cbs, train = VISION[name]
    def build(cb):
        "The digits learner with the scenario's callbacks, and `ReproducibleCallback` or not"
        dls = vision_dls()
        if not cb: scramble()
        return make_learner(dls, cb, cbs=[f() for f in cbs])
    runs = check(build, train, tmp_path, bar=name == 'ShowGraphCallback')
    a, b = runs['a'], runs['b']
    if name == 'EarlyStopping': assert len(a.trace.rows) == 2
    if name == 'to_fp16': assert hasattr(a, 'mixed_precision') and hasattr(b, 'mixed_precision') # its hooks ran
    if name == 'ReduceLROnPlateau': assert a.opt.hypers[0]['lr'] < a.reproducible.record.fits[0]['hypers'][0]['lr']
    if name == 'SaveModelCallback':
        sa, sb = (torch.load(r.path/'models'/'best.pth', weights_only=True) for r in (a, b))
        assert same_tensors(sa, sb)
    if name == 'CSVLogger':
        logs = [pd.read_csv(r.path/'history.csv').drop(columns='time') for r in (a, b)]
        assert logs[0].equals(logs[1]) and len(logs[0]) == 1

def test_tabular_learner(tmp_path):
    "Breast cancer data shipped with scikit-learn; dropout in the head"
    df = load_breast_cancer(as_frame=True).frame
    conts = [c for c in df.columns if c != 'target']
    def build(cb):
        "A tabular learner, with `ReproducibleCallback` or not"
        to = TabularPandas(df, procs=[Normalize], cont_names=conts, y_names='target', y_block=CategoryBlock(),
                           splits=RandomSplitter(0.2, seed=21)(range(len(df))))
        dls = to.dataloaders(bs=64, path=tmp_path)
        if not cb: scramble()
        return tabular_learner(dls, layers=[64, 32], config=tabular_config(ps=0.2), metrics=accuracy, cbs=repro_cbs(cb))
    check(build, lambda l: l.fit_one_cycle(2, 1e-2), tmp_path)

WORDS = dict(pos='good great fine lovely superb happy bright clever'.split(),
             neg='bad awful poor dull sad grim broken weak'.split(),
             any='the a film book day story plot cast it was and very quite rather'.split())

def corpus(n=240) -> pd.DataFrame:
    "Short made-up reviews: a label and a few words of its sentiment among neutral ones (own generator)"
    g = random.Random(0)
    rows = []
    for i in range(n):
        label = ('neg', 'pos')[i % 2]
        words = g.choices(WORDS['any'], k=8) + g.choices(WORDS[label], k=3)
        g.shuffle(words)
        rows.append(dict(text=' '.join(words).capitalize() + '.', label=label))
    return pd.DataFrame(rows)

@pytest.fixture(scope='module')
def text_dls(tmp_path_factory):
    "Tokenized once with spaCy's rule-based tokenizer (no model download); every run reuses these loaders"
    return TextDataLoaders.from_df(corpus(), path=tmp_path_factory.mktemp('text'), text_col='text', label_col='label',
                                   valid_pct=0.2, seed=21, bs=32, seq_len=24)

def test_text_classifier(text_dls, tmp_path):
    "AWD-LSTM (small, untrained) with its RNN dropouts, on loaders reused by every run"
    config = {**awd_lstm_clas_config, 'emb_sz': 32, 'n_hid': 64, 'n_layers': 2}
    def build(cb):
        "A text classifier on `text_dls`, with `ReproducibleCallback` or not"
        if not cb: scramble()
        return text_classifier_learner(text_dls, AWD_LSTM, pretrained=False, config=config, seq_len=24,
                                       metrics=accuracy, cbs=repro_cbs(cb))
    check(build, lambda l: l.fit_one_cycle(2, 1e-2), tmp_path)

def ratings(n_users=40, n_items=30, n=600) -> pd.DataFrame:
    "Made-up ratings from a rank-2 taste model plus noise (own generator)"
    g = np.random.default_rng(0)
    u, v = g.normal(size=(n_users, 2)), g.normal(size=(n_items, 2))
    users, items = g.integers(0, n_users, n), g.integers(0, n_items, n)
    r = np.clip(3 + (u[users] * v[items]).sum(1) + g.normal(0, .3, n), 0.5, 5)
    return pd.DataFrame(dict(user=users, item=items, rating=r.astype('float32')))

def test_collab_learner(tmp_path):
    df = ratings()
    def build(cb):
        "A collaborative filtering learner, with `ReproducibleCallback` or not"
        dls = CollabDataLoaders.from_df(df, valid_pct=0.2, seed=21, bs=64, item_name='item', path=tmp_path)
        if not cb: scramble()
        return collab_learner(dls, n_factors=8, y_range=(0, 5.5), cbs=repro_cbs(cb))
    check(build, lambda l: l.fit_one_cycle(2, 1e-2), tmp_path)
