"""Issue 22: the same numbers on the next machine. "Another machine" is made on this one: a process whose CPU kernels
are forced to another instruction set (ATen's `default`, oneDNN capped at SSE4.1, MKL at SSE4.2), as a CPU of another
kind would choose them natively. Native mode must differ from the saved run (the contrast); portable mode, set by the
documented step over whatever the environment held, must give the saved bits."""
import os, subprocess, sys
from pathlib import Path
import nbformat, pytest
from fastai_repro.all import PORTABLE_ENV, compare, kernel_mode, kernels_late
from fastai_repro.cli import main
from fastai_repro.determinism import cpu_isa, portable_possible
from fastai_repro.nbcheck import META_KEY, STATUS

pytestmark = pytest.mark.skipif(not portable_possible(), reason='portable mode needs an x86-64 CPU with AVX2')

JOB = Path(__file__).parent/'kernels_job.py'
OTHER = dict(ATEN_CPU_CAPABILITY='default', ONEDNN_MAX_CPU_ISA='SSE41', MKL_CBWR='SSE4_2') # another CPU, natively
# The final weights of `kernels_job.py` in portable mode, taken on an AMD EPYC with AVX-512 (torch 2.14.1, fastai 2.8):
# the AVX2 baseline's bits, which every x86-64 CPU from AVX2 up must give in portable mode
PORTABLE_WEIGHTS = -5297711040654995714

def native_env(**env) -> dict:
    "This process's environment without the portable settings (the tests run in portable mode), and `env`"
    return {**{k: v for k, v in os.environ.items() if k not in PORTABLE_ENV}, **env}

def job(data, out, env:dict, portable=False) -> tuple:
    "Run `kernels_job.py` in a new interpreter with `env` over this environment less the portable settings"
    r = subprocess.run([sys.executable, str(JOB), str(data), str(out), *(['portable'] if portable else [])],
                       capture_output=True, text=True, timeout=600, env=native_env(**env, CUDA_VISIBLE_DEVICES=''))
    assert r.returncode == 0, r.stderr[-3000:]
    digest, mode = r.stdout.split()[-2:]
    return int(digest), mode

@pytest.fixture(scope='module')
def data(tmp_path_factory):
    "96 digits at 16 px: three training batches of 32"
    from fastai_repro.all import make_digits_folder
    return make_digits_folder(tmp_path_factory.mktemp('data')/'digits', size=16, n=96)

def test_portable_fit_on_another_machine(data, tmp_path):
    "A real cnn_learner fit: another CPU's native kernels give other weights; portable mode gives the saved ones"
    saved, saved_mode = job(data, tmp_path/'saved.jsonl', PORTABLE_ENV) # saved in portable mode (a laptop)
    other, other_mode = job(data, tmp_path/'native.jsonl', OTHER) # checked natively on another CPU
    again, again_mode = job(data, tmp_path/'portable.jsonl', OTHER, portable=True) # there, portable_kernels() first
    assert (saved_mode, other_mode, again_mode) == ('portable', 'native', 'portable')
    assert other != saved # the contrast: native kernels of another CPU give other bits
    assert again == saved # portable mode over the other CPU's settings: the saved bits, exactly
    c = compare(tmp_path/'saved.jsonl', tmp_path/'native.jsonl')
    assert c.causes == ['kernels'], c.verdict() # named as its own cause, with its fix
    assert 'portable_kernels()' in c.fixes['kernels']
    assert compare(tmp_path/'saved.jsonl', tmp_path/'portable.jsonl').same
    assert saved == PORTABLE_WEIGHTS, f'{saved} on {cpu_isa()}: not the AVX2 baseline'
    if cpu_isa() == 'AVX512': # a real other machine: this CPU's own native kernels differ from the baseline too
        assert job(data, tmp_path/'here.jsonl', {})[0] != saved

def test_portable_kernels_too_late():
    """Set after a convolution ran (on "another machine", whose kernels differ from the baseline on any CPU), portable
    mode cannot take effect for oneDNN or ATen: `portable_kernels()` says so, naming both and the fix, and so does the
    callback, once"""
    code = ('import warnings, torch\n'
            'torch.nn.functional.conv2d(torch.zeros(2, 16, 16, 16), torch.zeros(16, 16, 3, 3))\n'
            'torch.softmax(torch.zeros(64), 0)\n'
            'from fastai_repro.all import portable_kernels\n'
            'with warnings.catch_warnings(record=True) as w:\n'
            '    warnings.simplefilter("always"); late = portable_kernels()\n'
            'w = [x for x in w if str(x.message).startswith("fastai_repro:")]\n'
            'print(len(late), len(w)); print(*late, sep="\\n")\n'
            'from fastai.test_utils import synth_learner\n'
            'from fastai_repro.all import ReproducibleCallback\n'
            'learn = synth_learner(cbs=ReproducibleCallback(21))\n'
            'with learn.no_bar(), learn.no_logging(), warnings.catch_warnings(record=True) as w:\n'
            '    warnings.simplefilter("always"); learn.fit(1); learn.fit(1)\n'
            'print("events", *[e["event"] for e in learn.reproducible.record.events if e["event"] == "kernels_late"])')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=native_env(**OTHER),
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert lines[0] == '2 2', r.stdout # two libraries late, each warned
    assert lines[1].startswith("ATen's kernels were chosen before portable mode was set (DEFAULT)"), r.stdout
    assert lines[2].startswith("oneDNN's kernels were chosen before portable mode was set (sse41)"), r.stdout
    assert all('before the first model is built' in l for l in lines[1:3])
    assert lines[-1] == 'events kernels_late kernels_late', r.stdout # the callback says so too, once (two fits)
    ok = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=native_env(**PORTABLE_ENV),
                        timeout=300) # the contrast: set before Python starts, nothing is late
    assert ok.stdout.splitlines()[0] == '0 0' and ok.stdout.splitlines()[-1] == 'events', ok.stdout

def test_tests_run_portable():
    "The project's tests run in portable mode (conftest), and so do the processes they start"
    assert kernel_mode() == 'portable' and kernels_late() == []
    out = subprocess.run([sys.executable, '-c', 'from fastai_repro.all import kernel_facts; print(kernel_facts())'],
                         capture_output=True, text=True, timeout=300).stdout
    assert "'mode': 'portable'" in out and "'aten': 'AVX2'" in out, out

TRAIN = '''from fastai.vision.all import *
from fastai_repro.all import ReproducibleCallback, digits_dls, weights_digest
dls = digits_dls({data!r}, seed=21, size=16, bs=32)
learn = cnn_learner(dls, resnet18, pretrained=False, cbs=ReproducibleCallback(21))
learn.fit(1, 1e-3)
print(weights_digest(learn.model))'''

def test_notebook_on_another_machine(data, tmp_path, monkeypatch, capsys):
    """A notebook saved by nbcheck --update, checked on another CPU: natively its outputs cannot come out bit for bit
    (exit 3, each cell named); in portable mode, nbcheck's default, every cell matches bit for bit (exit 0)"""
    kernel = dict(name='python3', display_name='python3', language='python')
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(TRAIN.format(data=str(data)))],
                                  metadata={'kernelspec': kernel})
    path = tmp_path/'train.ipynb'; nbformat.write(nb, path)
    main(['nbcheck', str(path), '--update']) # saved here, in portable mode
    env = nbformat.read(path, as_version=4).metadata[META_KEY]['environment']
    assert (env['kernels'], env['cpu_isa']) == ('portable', 'AVX2')
    capsys.readouterr()
    for k, v in OTHER.items(): monkeypatch.setenv(k, v) # the other machine
    assert main(['nbcheck', str(path), '--native']) == STATUS['unchecked'] # the contrast: its kernels differ
    out = capsys.readouterr().out
    assert 'cpu_isa: AVX2 saved, DEFAULT here' in out and 'cell 0: could not be checked bit for bit here' in out, out
    assert 'its text matches' in out, out
    assert 'why (run 0 of this cell' in out and 'DIFFER: kernels' in out, out # the records say why: the kernels
    assert 'data: the inputs differ' in out, out # its augmentation ran on other kernels too; the targets match
    assert main(['nbcheck', str(path)]) == STATUS['same'], capsys.readouterr().out # portable: bit for bit
