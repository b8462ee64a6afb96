"""Issue 13, item 4: the project's notebooks are stored executed, and each still prints what it saved
(`fastai-repro nbcheck`, which also fails on a cell that raises). One test per notebook, so that pytest-xdist runs
them beside the other tests."""
from pathlib import Path
import pytest
from fastai_repro.cli import main
from fastai_repro.nbcheck import notebooks

NBS = Path(__file__).parents[1]/'nbs'

@pytest.mark.parametrize('nb', notebooks([NBS]), ids=lambda nb: nb.stem)
def test_notebook_prints_what_it_saved(nb, capsys):
    "Executed in a fresh kernel, every code cell gives its saved outputs (under nbcheck's named rules)"
    code = main(['nbcheck', str(nb)])
    assert code == 0, capsys.readouterr().out
