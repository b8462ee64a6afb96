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
