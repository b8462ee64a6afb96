"""Check the docs site that docs/build.py built in _docs/, page by page, then screenshot two pages in Chromium.

Checks: the build warned about nothing and made a page per notebook; the sidebar lists them in file-name order; every
local link and image resolves (anchors too); no page shows a traceback, an error output or ANSI codes; every stored
plot and table shows; every module's page has a heading and a code block for each name of its `__all__` that it
defines. Then headless Chromium (Debian's `chromium`) loads the home page and a tutorial from a local `http.server`
and saves _docs/screenshots/*.png.

Usage: `python docs/check_site.py [SITE]` (SITE defaults to _docs/); prints every problem, exits 1 if there is one.
"""
from __future__ import annotations
import ast, importlib, inspect, json, re, shutil, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit
from bs4 import BeautifulSoup

ROOT = Path(__file__).resolve().parents[1]
NBS, SITE, PKG = ROOT/'nbs', ROOT/'_docs', 'fastai_repro'
SHOTS = {'index': 'index.html', '08_why_runs_differ': '08_why_runs_differ.html'} # screenshot name -> page
TRACEBACK = re.compile(r'Traceback \(most recent call last\)|\x1b\[|\[[0-9;]*[0-9]m|^\w*(Error|Exception): ', re.M)
INSTALL_CHROMIUM = 'apt-get update && apt-get install -y chromium' # Debian's package; CI runs it (.ci/run)

def pages(site:Path) -> dict[Path, BeautifulSoup]:
    "Every HTML page of `site`, parsed"
    return {p: BeautifulSoup(p.read_text(encoding='utf-8'), 'html.parser') for p in sorted(site.rglob('*.html'))}

def notebooks(nbs:Path=NBS) -> list[Path]:
    "The notebooks the site is built from"
    return sorted(nbs.glob('*.ipynb'))

def check_build(site:Path, docs:dict, nbs:Path=NBS) -> list[str]:
    "Problems of the build as a whole: a Sphinx warning (none is allowed but conf.py's), a notebook without a page"
    log = site/'build-warnings.txt'
    errs = [] if log.exists() else [f'{log} is missing: build the site with `make docs`']
    if log.exists() and log.read_text().strip(): errs.append(f'Sphinx warned:\n{log.read_text().strip()}')
    errs += [f'{nb.name} has no page {nb.stem}.html' for nb in notebooks(nbs) if not (site/f'{nb.stem}.html').exists()]
    return errs

def check_sidebar(site:Path, docs:dict, nbs:Path=NBS) -> list[str]:
    "The home page's sidebar lists every notebook's page, in the notebooks' file-name order"
    d = docs.get(site/'index.html')
    got = [a['href'] for a in d.select('.sidebar-tree a.reference')] if d else []
    want = [f'{nb.stem}.html' for nb in notebooks(nbs) if nb.stem != 'index']
    return [] if got == want else [f'the sidebar lists {got}, not the notebooks in order: {want}']

def _local(url:str) -> bool:
    "Whether `url` points into the site (no scheme, no host, not a data: URI)"
    u = urlsplit(url)
    return bool(url) and not (u.scheme or u.netloc or url.startswith('//'))

def check_links(site:Path, docs:dict, nbs:Path=NBS) -> list[str]:
    "Every local href and src (links, scripts, styles, images) names a file of `site`, and an id of it after `#`"
    ids = {p.resolve(): {t['id'] for t in d.find_all(id=True)} for p, d in docs.items()}
    errs = []
    for p, d in docs.items():
        for tag in d.find_all(href=True) + d.find_all(src=True):
            url = tag.get('href') if tag.has_attr('href') else tag.get('src')
            if not _local(url): continue
            u = urlsplit(url)
            target = (p.parent/unquote(u.path)).resolve() if u.path else p.resolve()
            where = f'{p.relative_to(site)}: <{tag.name}> {url}'
            if site.resolve() not in target.parents: errs.append(f'{where} leaves the site')
            elif not target.is_file(): errs.append(f'{where}: no such file')
            elif u.fragment and target in ids and unquote(u.fragment) not in ids[target]:
                errs.append(f'{where}: no id {u.fragment!r} in {target.name}')
    return errs

def check_tracebacks(site:Path, docs:dict, nbs:Path=NBS) -> list[str]:
    "No page shows a Python traceback, an error output, an exception line, red ANSI text or ANSI escape codes"
    errs = []
    for p, d in docs.items(): # myst-nb renders an error output as .traceback, and red ANSI codes as .-Color-Red
        if d.select('.traceback, .output.error, .highlight-ipythontb'): errs.append(f'{p.name}: an error output')
        if d.select('.cell_output .-Color-Red'): errs.append(f'{p.name}: red ANSI text (an error) in an output')
        main = d.find('article') or d # the page's content: its cells' sources and outputs
        for blk in main.select('pre, .output, .cell_output') or [main]:
            if m := TRACEBACK.search(txt := blk.get_text()): errs.append(f'{p.name}: {m.group(0)!r} in {txt[:200]!r}')
    for nb in notebooks(nbs): # a stored error output, whatever the page makes of it
        cells = json.loads(nb.read_text())['cells']
        errs += [f'{nb.name}: cell {i} failed' for i, c in enumerate(cells)
                 if any(o['output_type'] == 'error' for o in c.get('outputs', []))]
    return list(dict.fromkeys(errs)) # a block inside another one is found in both

def _stored(nb:Path) -> tuple[int, int]:
    "How many plots (PNG outputs) and tables (HTML or markdown) notebook `nb` has stored"
    outs = [o for c in json.loads(nb.read_text())['cells'] for o in c.get('outputs', [])]
    data = [o.get('data', {}) for o in outs]
    tables = sum('<table' in ''.join(d['text/html']) if 'text/html' in d else
                 bool(re.search(r'^\|[-| :]+\|\s*$', ''.join(d.get('text/markdown', '')), re.M)) for d in data)
    return sum('image/png' in d for d in data), tables

def check_outputs(site:Path, docs:dict, nbs:Path=NBS) -> list[str]:
    "Each notebook's page shows at least as many images and tables as the notebook has stored plots and tables"
    errs = []
    for nb in notebooks(nbs):
        d = docs.get(site/f'{nb.stem}.html')
        if d is None: continue # check_build says so
        (plots, tables), out = _stored(nb), d.select('.cell_output')
        shown = (sum(len(o.find_all('img')) for o in out), sum(len(o.find_all('table')) for o in out))
        if shown[0] < plots or shown[1] < tables:
            errs.append(f'{nb.stem}.html shows {shown[0]} images and {shown[1]} tables of {plots} plots and {tables}')
    return errs

def _module(nb:Path) -> str|None:
    "The module notebook `nb` exports to (its `default_exp`), or None for a tutorial"
    src = '\n'.join(''.join(c['source']) for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'code')
    return m.group(1) if (m := re.search(r'^#\|\s*default_exp\s+(\S+)', src, re.M)) else None

def api_entries(d:BeautifulSoup) -> set[str]:
    "Names documented on page `d`: headings followed, in their section, by a code block (signature or definition)"
    res = set()
    for h in d.select('section > h2, section > h3, section > h4, section > h5, section > h6'):
        if h.find_next_sibling(class_=re.compile('^highlight')) is not None:
            res.update(n.strip() for n in h.get_text().rstrip('¶#').split(','))
    return res

def defined(src:str) -> set[str]:
    "Names that module source `src` defines (def, class, assignment) at its top level, not those it imports"
    res, todo = set(), list(ast.parse(src).body)
    while todo:
        st = todo.pop()
        if isinstance(st, (ast.If, ast.Try)): todo += st.body + st.orelse + getattr(st, 'finalbody', [])
        elif isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): res.add(st.name)
        elif isinstance(st, (ast.Assign, ast.AnnAssign)):
            res |= {n.id for t in getattr(st, 'targets', [getattr(st, 'target', None)]) for n in ast.walk(t)
                    if isinstance(n, ast.Name)}
    return res

def check_api(site:Path, docs:dict, nbs:Path=NBS) -> list[str]:
    "Every module notebook's page documents every name of its module's `__all__` that the module defines"
    errs = []
    for nb in notebooks(nbs):
        if (mod := _module(nb)) is None or (d := docs.get(site/f'{nb.stem}.html')) is None: continue
        m = importlib.import_module(f'{PKG}.{mod}') # a name it only imports (fastai_repro.all) has its own page
        own = defined(inspect.getsource(m))
        missing = [n for n in getattr(m, '__all__', []) if n in own and n not in api_entries(d)]
        if missing: errs.append(f'{nb.stem}.html does not document {", ".join(missing)}')
    return errs

def chromium() -> str|None:
    "The Chromium (or Chrome) executable on PATH, if any"
    return next((p for n in ('chromium', 'chromium-browser', 'google-chrome') if (p := shutil.which(n))), None)

def screenshot(browser:str, url:str, png:Path, size:str='1280,2400') -> list[str]:
    "Have headless `browser` load `url` and save `png`; problems if it fails or the picture is blank"
    png.parent.mkdir(parents=True, exist_ok=True); png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as prof: # a fresh profile: nothing from an earlier run or a user
        cmd = [browser, '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
               '--disable-background-networking', '--disable-component-update', '--disable-sync', '--hide-scrollbars',
               f'--user-data-dir={prof}', f'--window-size={size}', f'--screenshot={png}', url]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if not png.exists(): return [f'{browser} made no screenshot of {url} (exit {r.returncode}): {r.stderr[-500:]}']
    from PIL import Image
    with Image.open(png) as im: colours = im.convert('RGB').getcolors(maxcolors=1 << 16)
    return [f'{png.name}: the page looks blank'] if colours is not None and len(colours) < 8 else []

def check_screenshots(site:Path) -> list[str]:
    "Serve `site` on localhost; Chromium loads the home page and a tutorial, each kept as site/screenshots/NAME.png"
    if (browser := chromium()) is None: return [f'Chromium is not installed, no page was loaded: {INSTALL_CHROMIUM}']
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    srv = subprocess.Popen([sys.executable, '-m', 'http.server', str(port), '--bind', '127.0.0.1', '--directory',
                            str(site)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100): # the server is up once it answers
            try: urllib.request.urlopen(f'http://127.0.0.1:{port}/', timeout=1).close(); break
            except OSError: time.sleep(0.1)
        return [e for name, page in SHOTS.items()
                for e in screenshot(browser, f'http://127.0.0.1:{port}/{page}', site/'screenshots'/f'{name}.png')]
    finally: srv.terminate(); srv.wait()

CHECKS = [check_build, check_sidebar, check_links, check_tracebacks, check_outputs, check_api]

def check(site:Path=SITE, nbs:Path=NBS, browser:bool=True) -> list[str]:
    "Every problem of the site in `site`, built from the notebooks in `nbs`; with `browser`, the screenshots' too"
    docs = pages(site)
    return [e for f in CHECKS for e in f(site, docs, nbs)] + (check_screenshots(site) if browser else [])

if __name__ == '__main__':
    t, problems = time.time(), check(Path(sys.argv[1]) if len(sys.argv) > 1 else SITE)
    print(*problems, sep='\n')
    print(f'{len(problems)} problems in the site' if problems else f'site OK ({time.time()-t:.1f} s)')
    sys.exit(1 if problems else 0)
