import pytest
from fastai_repro.determinism import portable_kernels
portable_kernels() # the tests run in portable mode, as nbcheck's kernels do: the same bits on every x86-64 CPU
from fastai_repro.all import make_digits_folder, digits_dls
from helpers import N_IMAGES, SIZE

@pytest.fixture(scope='session')
def digits(tmp_path_factory):
    "A pets-style folder of the first N_IMAGES digits"
    return make_digits_folder(tmp_path_factory.mktemp('data')/'digits', size=SIZE, n=N_IMAGES)

@pytest.fixture
def new_dls(digits):
    "Builds `DataLoaders` the way the pets notebook does (its `seed=21` included)"
    def _new(**kwargs): return digits_dls(digits, seed=21, size=SIZE, **kwargs)
    return _new

@pytest.fixture(scope='session')
def small_digits(tmp_path_factory):
    "192 digits at 16 pixels: for the tests that need images, not many"
    return make_digits_folder(tmp_path_factory.mktemp('data')/'digits16', size=16, n=192)

@pytest.fixture
def vision_dls(small_digits):
    "Builds `DataLoaders` on `small_digits` as `new_dls` does (its `seed=21`, its augmentation)"
    def _new(): return digits_dls(small_digits, seed=21, size=16, bs=32)
    return _new

@pytest.fixture(autouse=True)
def no_previous_run():
    "Each test starts with no earlier run to be compared with (the callback's `compare_previous`)"
    from fastai_repro.livecheck import reset_previous_runs
    reset_previous_runs()
    yield

# The longest tests (minutes each) by a part of their node id, longest first; pytest-xdist hands tests out in this order
LONGEST = ['11_pets_replayed', 'test_keyed_data.py', 'test_distributed.py', 'test_exact_resume',
           'test_pets_experiments.py', 'test_nbcheck.py', '08_why_runs_differ', '12_resume_anywhere',
           'test_resume_anywhere.py']
SHARED = ['test_keyed_data.py', 'test_distributed.py', 'test_nbcheck.py'] # their tests share a costly module fixture

def _rank(nodeid:str) -> int: return next((i for i, k in enumerate(LONGEST) if k in nodeid), len(LONGEST))

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
        def _split_scope(self, nodeid:str) -> str:
            file = nodeid.split('::')[0]
            return file if file.rsplit('/', 1)[-1] in SHARED else nodeid
    return Scheduling(config, log)
