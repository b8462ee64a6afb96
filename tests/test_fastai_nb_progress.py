"""fastai's nbs/16_callback.progress.ipynb scenarios, on plain fastai and with `ReproducibleCallback(21)` in every
`Learner` (the `with_callback` fixture, conftest.py)."""
import math, re
import pytest
from fastai.callback.progress import CSVLogger, ShowGraphCallback
from fastai.test_utils import synth_learner
from helpers import close, mse_metric, quiet

pytestmark = pytest.mark.usefixtures('restore_globals') # in these files only: flags and figures put back after each

# mirrors nbs/16_callback.progress.ipynb, "ProgressCallback" and "no_bar" (also validate without any training)
def test_progress_and_no_bar(with_callback, capsys):
    learn = synth_learner()
    assert hasattr(learn, 'progress')
    learn.fit(2)
    assert len(learn.recorder.values) == 2 and hasattr(learn, 'progress')
    capsys.readouterr()
    with learn.no_bar():
        assert not hasattr(learn, 'progress')
        learn.fit(2)
    assert hasattr(learn, 'progress')
    out = capsys.readouterr().out
    assert re.search(r"^\[0, [\d.]+, [\d.]+, '\d\d:\d\d'\]$", out, re.M) and re.search(r"^\[1, ", out, re.M), out
    learn = synth_learner(n_trn=5, metrics=mse_metric)
    res = learn.validate()
    assert len(res) == 2 and math.isclose(res[0], res[1], rel_tol=1e-6)

# mirrors nbs/16_callback.progress.ipynb, "ShowGraphCallback" (headless)
def test_show_graph_callback(with_callback):
    learn = synth_learner(cbs=ShowGraphCallback())
    learn.fit(3)
    n = len(learn.dls.train)
    assert learn.show_graph.nb_batches == [n, 2*n, 3*n] and len(learn.recorder.values) == 3
    learn.lr_find(num_it=10, show_plot=False) # not run in an lr_find
    assert learn.show_graph.nb_batches == [n, 2*n, 3*n]

# mirrors nbs/16_callback.progress.ipynb, "CSVLogger"
def test_csv_logger(with_callback, tmp_path):
    learn = synth_learner(path=tmp_path, cbs=CSVLogger())
    with quiet(learn): learn.fit(3)
    df = learn.csv_logger.read_log()
    assert list(df.columns) == list(learn.recorder.metric_names)
    for i, v in enumerate(learn.recorder.values): assert close(df.iloc[i, :3].tolist(), [i] + list(v), 1e-4)
    learn.get_preds() # inference writes nothing
    assert len(learn.csv_logger.read_log()) == 3
