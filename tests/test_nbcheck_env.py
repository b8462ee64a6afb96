"""Issue 22, items 3 and 4: where bits cannot match, `nbcheck` says so cell by cell and checks what it can (the text,
numbers within `--rtol`); its exit codes tell "same", "differs", "cannot read or a cell raised" and "could not be
checked here" apart; and the volatile `time` column is left out in every form Jupyter saves a training table in."""
import json, re, subprocess, sys, tomllib
from pathlib import Path
import nbformat, pytest
from fastai_repro.cli import main
from fastai_repro.determinism import portable_possible
from fastai_repro.nbcheck import META_KEY, STATUS, kernel_env, run_environment, worst

KERNEL = dict(name='python3', display_name='python3', language='python')
CELLS = ["print('loss', 0.5 * 1.5)", "print('weights', format(2**62 + 12345, 'x'))", "print('epochs', 2)"]

def saved(tmp_path, outputs, env) -> Path:
    "A notebook of `CELLS` whose saved stdout is `outputs` (one string a cell), saved in environment `env`"
    cells = [nbformat.v4.new_code_cell(s, outputs=[nbformat.v4.new_output('stream', name='stdout', text=o + '\n')])
             for s, o in zip(CELLS, outputs)]
    nb = nbformat.v4.new_notebook(cells=cells, metadata={'kernelspec': KERNEL, META_KEY: {'environment': env}})
    path = tmp_path/'nb.ipynb'; nbformat.write(nb, path)
    return path

RIGHT = ['loss 0.75', 'weights 4000000000003039', 'epochs 2']

@pytest.fixture
def here():
    "The environment nbcheck's kernels run in here (portable mode)"
    return run_environment(kernel_env())

def check(path, *args, capsys=None) -> tuple:
    "`fastai-repro nbcheck path *args`: its exit code and what it printed"
    code = main(['nbcheck', str(path), *args])
    return code, capsys.readouterr().out if capsys else ''

def test_same_environment_checks_bit_for_bit(tmp_path, here, capsys):
    "Saved here: a number that differs is a difference (1), whatever --rtol says; equal outputs are the same (0)"
    assert check(saved(tmp_path, RIGHT, here), capsys=capsys)[0] == STATUS['same']
    code, out = check(saved(tmp_path, ['loss 0.7500001', *RIGHT[1:]], here), '--rtol', '0.1', capsys=capsys)
    assert code == STATUS['differs'] and '1 of 3 compared cells differ' in out, out

def test_another_version_cannot_be_checked_bit_for_bit(tmp_path, here, capsys):
    "Saved with another torch: numbers that differ are not checked (3), each such cell named, and what was checked said"
    path = saved(tmp_path, ['loss 0.7500001', *RIGHT[1:]], {**here, 'torch': '2.13.0'})
    code, out = check(path, capsys=capsys)
    assert code == STATUS['unchecked'], out
    assert f"torch: 2.13.0 saved, {here['torch']} here" in out and 'cannot come out bit for bit here' in out
    assert "cell 0: could not be checked bit for bit here, print('loss', 0.5 * 1.5)" in out
    assert 'its text matches; numbers differ (0.7500001 saved, 0.75 now)' in out, out
    assert '1 of 3 could not be checked here' in out

def test_rtol_where_bits_cannot_match(tmp_path, here, capsys):
    "Another architecture: numbers within --rtol pass (0), beyond it differ (1); a digest cannot be checked (3)"
    env = {**here, 'machine': 'arm64'}
    code, out = check(saved(tmp_path, ['loss 0.7500001', *RIGHT[1:]], env), '--rtol', '1e-6', capsys=capsys)
    assert code == STATUS['same'] and '1 of 3 match within rtol=1e-06' in out, out
    code, out = check(saved(tmp_path, ['loss 0.76', *RIGHT[1:]], env), '--rtol', '1e-6', capsys=capsys)
    assert code == STATUS['differs'] and 'beyond rtol=1e-06' in out, out
    code, out = check(saved(tmp_path, [RIGHT[0], 'weights 4000000000003038', RIGHT[2]], env), '--rtol', '0.5',
                      capsys=capsys)
    assert code == STATUS['unchecked'] and 'a digest or image differs' in out, out

def test_numbers_written_otherwise(tmp_path, here, capsys):
    "Where bits cannot match, equal numbers written otherwise (0.75 and 0.750) match as numbers, without --rtol (0)"
    code, out = check(saved(tmp_path, ['loss 0.750', *RIGHT[1:]], {**here, 'torch': '2.13.0'}), capsys=capsys)
    assert code == STATUS['same'] and '1 of 3 match as numbers (written otherwise)' in out, out

@pytest.mark.parametrize('meta', ['not a dict', {'environment': 'not a dict'}, {}])
def test_metadata_not_as_written(tmp_path, here, meta, capsys):
    "Metadata that --update did not write: the notebook is checked bit for bit, without a traceback"
    path = saved(tmp_path, ['loss 0.7500001', *RIGHT[1:]], here)
    nb = json.loads(path.read_text()); nb['metadata'][META_KEY] = meta; path.write_text(json.dumps(nb))
    assert check(path, capsys=capsys)[0] == STATUS['differs']

def test_changed_text_differs_anywhere(tmp_path, here, capsys):
    "Where bits cannot match, a change in the text (not a number) is still a difference (1)"
    code, out = check(saved(tmp_path, ['loss is 0.75', *RIGHT[1:]], {**here, 'machine': 'arm64'}), capsys=capsys)
    assert code == STATUS['differs'] and 'the text differs' in out, out

def test_exit_codes_of_several_notebooks(tmp_path, here, capsys):
    "Several notebooks: an error wins, then a difference, then 'could not be checked here'; bad --rtol is an error"
    a = saved(tmp_path, ['loss 0.7500001', *RIGHT[1:]], {**here, 'torch': '2.13.0'}).rename(tmp_path/'a.ipynb')
    assert check(a, capsys=capsys)[0] == 3
    b = saved(tmp_path, ['loss 1', *RIGHT[1:]], here).rename(tmp_path/'b.ipynb')
    assert main(['nbcheck', str(a), str(b)]) == 1
    (tmp_path/'c.ipynb').write_text('{not json')
    assert main(['nbcheck', str(a), str(b), str(tmp_path/'c.ipynb')]) == 2
    assert main(['nbcheck', str(a), '--rtol', '-1']) == 2
    capsys.readouterr()
    assert (worst([0, 3]), worst([3, 1]), worst([1, 2, 3]), worst([])) == (3, 1, 2, 0)

@pytest.mark.skipif(not portable_possible(), reason='portable mode needs an x86-64 CPU with AVX2')
def test_update_saves_the_environment(tmp_path, here):
    "--update writes the environment it ran in into the notebook's metadata, and this project's nbdev-clean keeps it"
    path = saved(tmp_path, ['loss 1', *RIGHT[1:]], None)
    assert main(['nbcheck', str(path), '--update']) == 0 # saved: it now holds what it printed
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata[META_KEY]['environment'] == here and here['kernels'] == 'portable'
    assert main(['nbcheck', str(path)]) == 0
    from nbdev.clean import clean_nb
    cfg = tomllib.loads((Path(__file__).parents[1]/'pyproject.toml').read_text())['tool']['nbdev']
    d = json.loads(path.read_text()); clean_nb(d, allowed_metadata_keys=cfg.get('allowed_metadata_keys'))
    assert d['metadata'][META_KEY]['environment'] == here

FIT = '''from fastai.basics import *
from fastai.callback.progress import ProgressCallback
from fastai.test_utils import synth_learner
set_seed(42)
learn = synth_learner(n_trn=64)
learn.fit(1)'''

def test_time_left_out_of_jupyters_own_save(tmp_path, capsys):
    """A notebook executed and saved by Jupyter's own executor (`jupyter nbconvert --execute`), its training table in
    HTML, markdown and plain text, its times then changed as another machine's would be: nbcheck passes it"""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(FIT)], metadata={'kernelspec': KERNEL})
    path = tmp_path/'fit.ipynb'; nbformat.write(nb, path)
    r = subprocess.run([sys.executable, '-m', 'jupyter', 'nbconvert', '--to', 'notebook', '--execute', '--inplace',
                        str(path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    nb = json.loads(path.read_text())
    table = [o for o in nb['cells'][0]['outputs'] if 'train_loss' in json.dumps(o)]
    assert table and {'text/html', 'text/markdown', 'text/plain'} <= set(table[0]['data']), table
    for mime, v in table[0]['data'].items(): # another machine's seconds, in every form of the table
        table[0]['data'][mime], n = re.subn(r'>(\d+:)?\d\d:\d\d<', '>59:18<', ''.join(v))
        assert n == 1, (mime, v) # one time, in each form
    path.write_text(json.dumps(nb))
    code, out = check(path, capsys=capsys)
    assert code == 0 and "the `time` column of fastai's training tables" in out, out
