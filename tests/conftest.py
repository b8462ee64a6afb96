import pytest
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
    from fastai_repro import callback
    callback._previous.clear()
    yield

LONGEST = ['test_docs_notebooks.py', 'test_isolation.py', 'test_pets_experiments.py'] # minutes each, in all
SHARED = ['test_keyed_data.py', 'test_distributed.py', 'test_nbcheck.py'] # their tests share a costly module fixture

def pytest_collection_modifyitems(items):
    "The longest files' tests first, since pytest-xdist hands tests out in this order; the rest in their usual order"
    items.sort(key=lambda item: LONGEST.index(item.path.name) if item.path.name in LONGEST else len(LONGEST))

def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist (`make test` runs `-n 2`) hands out each test alone, but all the tests of a `SHARED` file to one
    worker, which builds their fixture once; bigger units first. (Its `--dist loadgroup` would do this with marks,
    but under pytest 9.2 its renamed node ids are ignored.)"""
    from xdist.scheduler import LoadScopeScheduling
    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid:str) -> str:
            file = nodeid.split('::')[0]
            return file if file.rsplit('/', 1)[-1] in SHARED else nodeid
    return Scheduling(config, log)
