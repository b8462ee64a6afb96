"""Issue 13, items 1, 2 and 3: `fastai-repro nbcheck` on training notebooks, as Jupyter runs them. With the callback,
a notebook re-executed prints its saved numbers, alone or two at a time; without it, the training cells differ. A
changed training cell is explained by the records saved beside the notebook."""
import json, shutil
from pathlib import Path
import nbformat, pytest
from fastai_repro.cli import main
from fastai_repro.nbcheck import nbcheck

SETUP = '''import torch
from torch import nn
from fastai.data.core import TfmdDL, DataLoaders
from fastai.learner import Learner
from fastai.torch_core import TensorBase
from fastai_repro.all import ReproducibleCallback, weights_digest
items = [(TensorBase(torch.arange(4.) + i % 7), i % 2) for i in range(48)]
dls = DataLoaders(TfmdDL(items, bs=8, shuffle=True, num_workers=0), TfmdDL(items[:16], bs=8, num_workers=0))'''

def training_notebook(path:Path, callback:bool, lr:float):
    "A notebook that trains a small model with fastai (its table of epochs in HTML) and prints the results"
    cbs = 'ReproducibleCallback(21)' if callback else 'None'
    cells = [SETUP, f'cbs = {cbs}\n'
             'learn = Learner(dls, nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2)),\n'
             f'                loss_func=nn.CrossEntropyLoss(), cbs=cbs)', f'learn.fit(2, {lr})',
             'learn.recorder.values', 'print(hex(weights_digest(learn.model)))']
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata['kernelspec'] = dict(name='python3', display_name='python3', language='python')
    nbformat.write(nb, path)

@pytest.fixture(scope='module')
def folder(tmp_path_factory) -> Path:
    "Two training notebooks with the callback, executed once and saved with their outputs; one without it"
    root = tmp_path_factory.mktemp('nbs')
    training_notebook(root/'a.ipynb', True, 1e-2); training_notebook(root/'b.ipynb', True, 3e-2)
    training_notebook(root/'c_plain.ipynb', False, 1e-2)
    done = nbcheck([root], update=True, n_workers=1) # nothing was saved yet: every notebook differs, and is saved (0)
    assert [(r.status, r.updated, len(r.differ) > 0) for r in done] == [(0, True, True)] * 3
    return root

def test_saved_outputs_hold_the_training_table(folder):
    "What was saved is what Jupyter shows: fastai's table of epochs as HTML"
    nb = json.loads((folder/'a.ipynb').read_text())
    html = ''.join(''.join(o['data'].get('text/html', '')) for o in nb['cells'][2]['outputs'] if 'data' in o)
    assert '<table' in html and 'train_loss' in html

def test_with_the_callback_parallel_equals_serial(folder, capsys):
    "Two training notebooks re-executed two at a time print what they printed one at a time (saved by the fixture)"
    two = nbcheck([folder/'a.ipynb', folder/'b.ipynb'], n_workers=2)
    assert [r.status for r in two] == [0, 0] and [r.compared for r in two] == [5, 5]
    assert 'time' in two[0].rules <= {'time', 'paths'} # left out of the training table (and a warning's path), said so
    assert main(['nbcheck', '--n-workers', '1', str(folder/'a.ipynb'), str(folder/'b.ipynb')]) == 0 # and one at a time
    out = capsys.readouterr().out
    assert out.count('5 compared cells match') == 2 and "the `time` column of fastai's training tables" in out

def test_without_the_callback_training_cells_differ(folder, capsys):
    "The contrast: without the callback, re-executing changes the training cells, and the report shows how"
    assert main(['nbcheck', str(folder/'c_plain.ipynb')]) == 1
    out = capsys.readouterr().out
    assert '3 of 5 compared cells differ' in out and '--- saved' in out and '+++ now' in out
    assert [l.split(':')[0].strip() for l in out.splitlines()
            if l.startswith('  cell ')] == ['cell 2', 'cell 3', 'cell 4']

def test_a_changed_training_cell_says_why(folder, tmp_path, capsys):
    "`--update` kept the training cell's record beside the notebook; after a change of learning rate the report says so"
    nb = nbformat.read(folder/'a.ipynb', as_version=4)
    assert sorted(p.name for p in (folder/'a.records').iterdir()) == [f'{nb.cells[2].id}-0.jsonl'] # the training cell
    assert not (folder/'c_plain.records').exists() # no callback, no record
    shutil.copytree(folder/'a.records', tmp_path/'a.records')
    nb.cells[2].source = 'learn.fit(2, 0.02)'; nbformat.write(nb, tmp_path/'a.ipynb')
    assert main(['nbcheck', str(tmp_path/'a.ipynb')]) == 1
    out = capsys.readouterr().out
    cell2 = out[out.index('  cell 2:'):out.index('  cell 3:')]
    assert 'why (run 0 of this cell' in cell2 and 'DIFFER: hyperparameters' in cell2, out
    assert 'call[0].args.lr: 0.01 vs 0.02' in cell2 and 'an intended change' in cell2 # the detail, and what it means
    shutil.rmtree(tmp_path/'a.records') # the contrast: no saved record, and the report says so
    assert main(['nbcheck', str(tmp_path/'a.ipynb')]) == 1
    assert 'why: no record of run 0 of this cell was saved' in capsys.readouterr().out
