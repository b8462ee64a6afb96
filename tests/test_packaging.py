"""Issue 29: fastai_repro as a user of another project meets it, installed as a dependency. The wheel is built from
this tree and installed without extras into a fresh virtual environment, offline (`pip install --no-index`), where only
the distributions its requirements reach are installed: the dev environment's own files, linked in one by one, so that
pip finds each requirement met and nothing of the `nbcheck` extra (nbformat, nbclient, jupyter_client, ipykernel,
IPython) can be imported. There the console script and the callback must work, and `nbcheck` must say which extra
to install (exit 2, no traceback); then, with the extra installed the same way, `nbcheck` checks a notebook."""
from __future__ import annotations
import os, shutil, subprocess, sys, time, zipfile
import importlib.metadata as md
from email.parser import Parser
from pathlib import Path
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT/'nbs'/'08_why_runs_differ.records'
NOTEBOOK = ROOT/'nbs'/'06_all.ipynb' # small: it imports the public API, trains nothing
EXTRA_MODULES = ('nbformat', 'nbclient', 'jupyter_client', 'ipykernel', 'IPython') # what the `nbcheck` extra brings
INSTALL = "pip install 'fastai_repro[nbcheck]'"
FIT = '''import torch
from fastai_repro.all import ReproducibleCallback, compare, weights_equal
from fastai.test_utils import synth_learner
def run():
    torch.manual_seed(0); learn = synth_learner(n_trn=4, cbs=ReproducibleCallback(21))
    with learn.no_bar(), learn.no_logging(): learn.fit(2)
    return learn
a, b = run(), run()
print(weights_equal(a.model, b.model), compare(a.reproducible.record, b.reproducible.record).same,
      len(a.reproducible.record.fits))''' # two short fits with the callback: bit-identical, one fit recorded each

def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    "Run `cmd`, its output kept as text"
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)

def _ok(cmd, **kwargs) -> subprocess.CompletedProcess:
    "Run `cmd`; fail the test with its output unless it exits 0"
    r = _run(cmd, **kwargs)
    assert r.returncode == 0, f'{cmd} exited {r.returncode}\n{r.stdout}\n{r.stderr}'
    return r

@pytest.fixture(scope='module')
def wheel(tmp_path_factory) -> Path:
    "The wheel built from a copy of this tree's package, README.md and pyproject.toml (nothing written in the tree)"
    src, out = tmp_path_factory.mktemp('src'), tmp_path_factory.mktemp('dist')
    for f in ('pyproject.toml', 'README.md'): shutil.copy(ROOT/f, src)
    shutil.copytree(ROOT/'fastai_repro', src/'fastai_repro', ignore=shutil.ignore_patterns('__pycache__'))
    _ok([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation', '--no-index', '-w', out,
         src])
    return next(out.glob('fastai_repro-*.whl'))

def _metadata(whl:Path):
    "The METADATA of a wheel, parsed"
    with zipfile.ZipFile(whl) as z:
        name = next(n for n in z.namelist() if n.endswith('.dist-info/METADATA'))
        return Parser().parsestr(z.read(name).decode())

def _requirements(meta, extra:str|None=None) -> dict:
    "Requires-Dist by canonical name: those without a marker, or (with `extra`) those of that extra"
    res = {}
    for r in map(Requirement, meta.get_all('Requires-Dist') or []):
        mine = r.marker is None if extra is None else r.marker is not None and r.marker.evaluate({'extra': extra})
        if mine: res[canonicalize_name(r.name)] = r
    return res

def test_metadata_fit_for_an_index(wheel):
    "Real classifiers, no placeholder author, bounds that let torch be upgraded, the extras named by what they bring"
    meta = _metadata(wheel)
    for c in ('Programming Language :: Python :: 3.11', 'Framework :: Jupyter',
              'Intended Audience :: Science/Research', 'Topic :: Scientific/Engineering :: Artificial Intelligence'):
        assert c in meta.get_all('Classifier'), c
    people = [v for k in ('Author', 'Author-email', 'Maintainer', 'Maintainer-email') for v in meta.get_all(k) or []]
    assert not any('.invalid' in v or 'example' in v for v in people), f'a placeholder author or e-mail: {people}'
    assert not meta.get_all('Project-URL'), 'no repository or page is known to exist: no URL until one does'
    reqs = _requirements(meta)
    torch = reqs['torch'].specifier
    assert torch.contains('99.0') and torch.contains('2.1') and not torch.contains('2.0.1') # no cap; 2.1 at least
    assert 'torchvision' not in reqs or reqs['torchvision'].specifier.contains('99.0') # each one pins its torch
    fastai = reqs['fastai'].specifier # fastai's internals are patched: its next minor version is a known break
    assert fastai.contains('2.8.12') and not fastai.contains('2.9.0')
    assert {'nbformat', 'nbclient', 'jupyter-client', 'ipykernel'} <= set(_requirements(meta, 'nbcheck'))
    assert 'accelerate' in _requirements(meta, 'distributed')

def _reached(reqs:list, extras=('',)) -> set:
    "The canonical names of the installed distributions that requirement strings `reqs` (with `extras`) reach"
    seen, todo = set(), [(s, set(extras)) for s in reqs]
    while todo:
        s, extra = todo.pop()
        r = Requirement(s)
        if r.marker is not None and not any(r.marker.evaluate({'extra': e}) for e in extra): continue
        key = (canonicalize_name(r.name), frozenset(r.extras))
        if key in seen: continue
        seen.add(key)
        todo += [(q, set(r.extras) | {''}) for q in md.distribution(r.name).requires or []]
    return {n for n, _ in seen}

def _files(d) -> set:
    "The files a distribution installed, inside its site-packages folder, as tuples of path parts"
    return {tuple(f.parts) for f in d.files or [] if f.parts[0] != '..'}

def _link(names:set, site:Path, into:Path):
    """Link into the site-packages folder `into` the files of the distributions `names` installed in `site`: each
    folder whole where no other distribution has a file in it, else its own files and folders one by one"""
    dists = {canonicalize_name(d.metadata['Name']): d for d in md.distributions(path=[str(site)])}
    mine = {p for n in names for p in _files(dists[n])}
    blocked = {p[:k] for n, d in dists.items() if n not in names for p in _files(d) for k in range(1, len(p) + 1)}
    parts = {next((p[:k] for k in range(1, len(p) + 1) if p[:k] not in blocked), None) for p in mine} - {None}
    for part in sorted(parts):
        dest = into.joinpath(*part)
        if dest.exists() or dest.is_symlink(): continue # linked before
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to(site.joinpath(*part))

def test_installed_as_a_dependency(wheel, tmp_path):
    "The wheel without extras in a fresh offline environment: --version, diff, nbcheck's message, a fit; then nbcheck"
    t0 = time.time()
    venv, ver = tmp_path/'venv', f'python{sys.version_info.major}.{sys.version_info.minor}'
    _ok([sys.executable, '-m', 'venv', '--without-pip', venv])
    site, into, bin_ = Path(md.distribution('fastai').locate_file('')), venv/'lib'/ver/'site-packages', venv/'bin'
    env = {k: v for k, v in os.environ.items() if not k.startswith(('PYTHON', 'PIP_', 'VIRTUAL_ENV', 'JUPYTER'))}
    env.update(PATH=f"{bin_}{os.pathsep}{env.get('PATH', '')}", PYTHONNOUSERSITE='1', PIP_NO_INDEX='1',
               PYTHONDONTWRITEBYTECODE='1', # nothing written through the links into the dev environment
               PIP_FIND_LINKS=str(wheel.parent), PIP_DISABLE_PIP_VERSION_CHECK='1',
               JUPYTER_DATA_DIR=str(tmp_path/'jupyter')) # no kernel of the user's: the extra's own
    run = lambda *cmd: _run(cmd, env=env, cwd=tmp_path) # never in the tree, whose `fastai_repro/` would be imported
    pip = [sys.executable, '-m', 'pip', '--python', bin_/'python', 'install', '-q', '--no-index']
    reqs = _metadata(wheel).get_all('Requires-Dist')
    _link(_reached(reqs), site, into)
    _ok([*pip, wheel], env=env, cwd=tmp_path) # offline: every requirement must be met by what is linked
    t_install = time.time() - t0
    py = [bin_/'python', '-c']
    r = run(*py, 'import fastai_repro, importlib.util as u; print(fastai_repro.__file__); '
            f'print([m for m in {EXTRA_MODULES!r} if u.find_spec(m)])')
    assert r.stdout.splitlines() == [str(into/'fastai_repro'/'__init__.py'), '[]'], r # the wheel's; no extra

    t = time.time()
    r = run(bin_/'fastai-repro', '--version')
    t_version = time.time() - t
    v = {p: md.version(p) for p in ('fastai_repro', 'fastai', 'torch')}
    want = f"fastai_repro {v['fastai_repro']} (fastai {v['fastai']}, torch {v['torch']})"
    assert (r.returncode, r.stdout.strip()) == (0, want), r
    r = run(bin_/'fastai-repro', 'diff', RECORDS/'81255022-0.jsonl', RECORDS/'81255022-1.jsonl')
    assert r.returncode == 1 and 'split: the items are the same but the train/valid split differs' in r.stdout, r
    assert run(bin_/'fastai-repro', 'diff', RECORDS/'81255022-0.jsonl', RECORDS/'81255022-0.jsonl').returncode == 0

    r = run(bin_/'fastai-repro', 'nbcheck', NOTEBOOK) # without the extra: what to install, in one line; exit 2
    assert r.returncode == 2 and INSTALL in r.stderr and 'Traceback' not in r.stdout + r.stderr, r
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = run(*py, f'from fastai_repro.nbcheck import check\ntry: check({str(NOTEBOOK)!r})\n'
            'except ImportError as e: print(type(e).__name__, e)')
    assert r.returncode == 0 and INSTALL in r.stdout, r # the public function says so too

    t = time.time()
    r = run(*py, FIT)
    assert (r.returncode, r.stdout.split()) == (0, ['True', 'True', '1']), r
    t_fit = time.time() - t

    _link(_reached(reqs, ['nbcheck']), site, into) # now the extra
    _ok([*pip, 'fastai_repro[nbcheck]'], env=env, cwd=tmp_path) # met offline by what is linked
    r = run(*py, "from jupyter_client.kernelspec import KernelSpecManager as K; "
            "print(K().get_kernel_spec('python3').argv[0])")
    assert r.stdout.strip() in (str(bin_/'python'), 'python'), r # the notebook's kernel runs in this environment
    t = time.time()
    r = run(bin_/'fastai-repro', 'nbcheck', NOTEBOOK)
    assert r.returncode == 0 and 'compared cells match' in r.stdout, r
    t_nb = time.time() - t
    print(f'packaging: install {t_install:.1f} s, --version {t_version:.2f} s, fit {t_fit:.1f} s, '
          f'nbcheck {t_nb:.1f} s, all {time.time() - t0:.1f} s')
