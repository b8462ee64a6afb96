import functools, inspect, warnings
import pytest
from fastai_repro.determinism import portable_kernels
portable_kernels() # the tests run in portable mode, as nbcheck's kernels do: the same bits on every x86-64 CPU
import matplotlib
matplotlib.use('Agg') # headless: figures are drawn, never shown
import matplotlib.pyplot as plt
from fastcore.foundation import L
from fastai.learner import Learner
from fastai_repro.all import (ReproducibleCallback, ReproducibilityWarning, determinism_flags, digits_dls,
                              make_digits_folder, set_determinism_flags)
from helpers import N_IMAGES, SIZE

@pytest.fixture(scope='session')
def digits(tmp_path_factory):
    "A pets-style folder of the first N_IMAGES digits"
    return make_digits_folder(tmp_path_factory.mktemp('data')/'digits', size=SIZE, n=N_IMAGES)

@pytest.fixture
def new_dls(digits):
    "Builds `DataLoaders` the way the pets notebook does (its `seed=21` included)"
    def _new(**kwargs):
        "New `DataLoaders` of `digits`"
        return digits_dls(digits, seed=21, size=SIZE, **kwargs)
    return _new

@pytest.fixture(scope='session')
def small_digits(tmp_path_factory):
    "192 digits at 16 pixels: for the tests that need images, not many"
    return make_digits_folder(tmp_path_factory.mktemp('data')/'digits16', size=16, n=192)

@pytest.fixture
def vision_dls(small_digits):
    "Builds `DataLoaders` on `small_digits` as `new_dls` does (its `seed=21`, its augmentation)"
    def _new():
        "New `DataLoaders` of `small_digits`"
        return digits_dls(small_digits, seed=21, size=16, bs=32)
    return _new

@pytest.fixture(autouse=True)
def no_previous_run():
    "Each test starts with no earlier run to be compared with (the callback's `compare_previous`)"
    from fastai_repro.livecheck import reset_previous_runs
    reset_previous_runs()
    yield

ATTACHED_LATE = 'ReproducibleCallback: the model was built before ReproducibleCallback seeded'

@pytest.fixture(params=[False, True])
def with_callback(request, monkeypatch):
    """For this test only (param True), every `Learner` built gets `ReproducibleCallback(21)` appended to its `cbs`.
    Every scenario of fastai's own notebook tests (`test_fastai_nb_*.py`, written from what the notebooks check; no
    notebook cell is copied) takes it: False runs it on plain fastai (the contrast that shows the scenario itself is
    sound), True with the callback. Both must pass."""
    if request.param:
        init = Learner.__init__
        sig = inspect.signature(init)
        @functools.wraps(init)
        def _init(self, *args, **kwargs):
            "`Learner.__init__` with `ReproducibleCallback(21)` appended to `cbs`"
            ba = sig.bind(self, *args, **kwargs)
            ba.arguments['cbs'] = L(ba.arguments.get('cbs')) + [ReproducibleCallback(21)]
            with warnings.catch_warnings(): # built inside `Learner.__init__`, after the model: expected here
                warnings.filterwarnings('ignore', message=ATTACHED_LATE, category=ReproducibilityWarning)
                init(*ba.args, **ba.kwargs)
        monkeypatch.setattr(Learner, '__init__', _init)
    return request.param

@pytest.fixture
def restore_globals():
    """What a scenario leaves behind (determinism flags of a fit opened by hand, figures): the next test starts clean.
    Not autouse: the `test_fastai_nb_*.py` files ask for it for all their tests (`pytestmark`)."""
    flags = determinism_flags()
    yield
    set_determinism_flags(flags)
    plt.close('all')

# The longest tests (minutes each) by a part of their node id, longest first; pytest-xdist hands tests out in this order
LONGEST = ['11_pets_replayed', 'test_keyed_data.py', 'test_distributed.py', 'test_distributed_resume.py',
           'test_world_size_resume.py',
           'test_exact_resume', 'test_pets_experiments.py', 'test_nbcheck.py', '08_why_runs_differ',
           '12_resume_anywhere', 'test_resume_anywhere.py']
# their tests share a costly module fixture
SHARED = ['test_keyed_data.py', 'test_distributed.py', 'test_distributed_resume.py', 'test_nbcheck.py',
          'test_world_size_resume.py']

def _rank(nodeid:str) -> int:
    "Where the test `nodeid` comes in `LONGEST` (after all of them when it is not there)"
    return next((i for i, k in enumerate(LONGEST) if k in nodeid), len(LONGEST))

def pytest_collection_modifyitems(items):
    "The longest tests first, the rest in their usual order"
    items.sort(key=lambda item: _rank(item.nodeid))

@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under `pytest -n` (`make test` runs `-n 2`), each test is handed out alone, in the order collected, except that
    all the tests of a `SHARED` file go to one worker, which builds their fixture once. (pytest-xdist's own
    `--dist loadgroup` would do this with marks, but under pytest 9.2 the node ids it renames are ignored.)"""
    if config.getvalue('dist') != 'load': return None # another --dist asked for: pytest-xdist's own
    from xdist.scheduler import LoadScopeScheduling
    config.option.loadscopereorder = False # else the biggest units first, not the longest
    class Scheduling(LoadScopeScheduling):
        "pytest-xdist's scope scheduling, a scope being a test, or a whole `SHARED` file"
        def _split_scope(self, nodeid:str) -> str:
            "The scope of the test `nodeid`: the test itself, or its file where that is in `SHARED`"
            file = nodeid.split('::')[0]
            return file if file.rsplit('/', 1)[-1] in SHARED else nodeid
    return Scheduling(config, log)
