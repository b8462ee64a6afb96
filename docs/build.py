"""Build the docs site in _docs/ from the stored, executed notebooks in nbs/, executing none of their cells.

Each notebook is processed with nbdev's own processors, as `nbdev-proc-nbs` does (`show_doc` added after every
exported definition, `export` and `hide` cells dropped, ANSI codes stripped), except nbdev's `exec_show_docs`: it
re-runs every cell that imports something, which replaces the stored outputs of cells that train. `ApiDocs` takes its
place: it renders only the `show_doc` cells, from the installed module, and adds the exported constants' definitions.
Sphinx and myst-nb then render the processed notebooks (`nb_execution_mode = "off"`, docs/conf.py) into _docs/.
Quarto, which `nbdev-docs` needs, can not be installed here (docs/conf.py says why).

Usage: `python docs/build.py` (what `make docs` runs); exits non-zero on a Sphinx warning that conf.py does not allow.
"""
from __future__ import annotations
import ast, importlib, inspect, re, shutil, subprocess, sys, warnings
import nbformat
from pathlib import Path
from types import ModuleType
from fastcore.docments import DocmentTbl, DocmentText, MarkdownRenderer, _ital_first
from fastcore.nbio import mk_cell, read_nb, write_nb
from nbdev.process import NBProcessor, Processor
from nbdev.processors import (_show_docs, add_show_docs, clean_magics, filter_stream_, hide_, hide_line,
                              populate_language, rm_export, rm_header_dash, strip_ansi, strip_hidden_metadata)

ROOT = Path(__file__).resolve().parents[1]
NBS, OUT = ROOT/'nbs', ROOT/'_docs'
SRC, DOCTREES = ROOT/'_proc'/'sphinx'/'src', ROOT/'_proc'/'sphinx'/'doctrees' # _proc/ is ignored by git, as _docs/
WARNINGS_LOG = OUT/'build-warnings.txt' # what Sphinx warned about; docs/check_site.py requires it to be empty
PKG = 'fastai_repro'

class _PlainSig(DocmentText):
    "fastcore's signature text without the docments comments: the table under it shows them"
    @property
    def params(self) -> list: return [(f, None) for f, _ in DocmentText.params.fget(self)]
    @property
    def _ret_str(self) -> str: return DocmentText._ret_str.fget(self).split(' # ')[0]

def api_markdown(sym:object, name:str|None, level:int) -> str:
    "What nbdev's `show_doc(sym)` shows (heading, signature, docstring), with the docments as a table (nbdev 2's)"
    r = MarkdownRenderer(sym, name=name) # the signature, with the docments as comments, and the docstring
    md = r._repr_markdown_()
    try: tbl = DocmentTbl(r.sym)
    except Exception: tbl = None # no signature to take parameters from: fastcore's text above says so
    if tbl is not None and tbl.has_docment:
        sig = _PlainSig(r.sym, maxline=80, docstring=False) # fits furo's column
        md = f'```python\n{sig}\n```' + (f'\n\n{_ital_first(r.docs)}' if r.docs else '') + f'\n\n{tbl}'
    if inspect.isclass(r.sym): md = md.replace('```python\ndef ', '```python\nclass ', 1) # fastcore writes `def`
    return f"{'#'*level} {r.nm}\n\n{md}"

def heading_level(md:str) -> int:
    "The level of the last heading in markdown `md` (0 if none), outside fenced code"
    level, fenced = 0, False
    for line in md.splitlines():
        if line.lstrip().startswith('```'): fenced = not fenced
        elif not fenced and (m := re.match(r'(#{1,6})\s', line)): level = len(m.group(1))
    return level

def constants(src:str, names:set) -> list:
    "(line, names, definition) of each top-level assignment in `src` to some of `names`, with its lines' comments"
    res, lines = [], src.splitlines()
    for st in ast.parse(src).body:
        tgts = st.targets if isinstance(st, ast.Assign) else [st.target] if isinstance(st, ast.AnnAssign) else []
        nms = [n.id for t in tgts for n in ast.walk(t) if isinstance(n, ast.Name) and n.id in names]
        if nms: res.append((st.lineno, nms, '\n'.join(lines[st.lineno-1:st.end_lineno])))
    return res

def load_module(name:str) -> ModuleType:
    "Import module `name`, with its `if TYPE_CHECKING:` imports too, so that its annotations (strings) evaluate"
    m = importlib.import_module(name)
    for st in ast.parse(inspect.getsource(m)).body:
        if isinstance(st, ast.If) and 'TYPE_CHECKING' in ast.unparse(st.test):
            exec(compile(ast.Module(st.body, []), m.__file__, 'exec'), vars(m)) # as a type checker or Sphinx would
    return m

def _defs(src:str) -> dict[str, int]:
    "The line of each top-level `def` and `class` in `src`, by name"
    return {st.name: st.lineno for st in ast.parse(src).body if isinstance(st, (ast.FunctionDef, ast.ClassDef))}

_DOC_DIRS = {'export', 'exports', 'exec_doc'} # the cells add_show_docs adds `show_doc` cells after

class ApiDocs(Processor):
    "Render the `show_doc` cells from the installed module, add the exported constants' definitions; run no other cell"
    def begin(self) -> None:
        "Turn `show_doc` cells into markdown (as Quarto shows nbdev's `output: asis`), in their export cell's order"
        mod = next((c.directives_['default_exp'].split()[0] for c in self.nb.cells if 'default_exp' in c.directives_),
                   None)
        if mod is None: return # a tutorial: it exports nothing, and nbdev adds no `show_doc` to it
        m = load_module(f'{PKG}.{mod}')
        self.ns = {**vars(m), 'show_doc': lambda sym, name=None, **_: (sym, name)} # evaluates what a cell documents
        done = set(re.findall(r'^show_doc\((\w+)\)', '\n'.join(c.source for c in self.nb.cells), flags=re.M))
        consts, cells, level, nbc = set(getattr(m, '__all__', [])) - done, [], 1, self.nb.cells
        for i, cell in enumerate(nbc):
            if getattr(cell, 'has_sd', False): continue # added by add_show_docs after its export cell: shown there
            cells.append(cell)
            lvl = min(level+1, 6) # an entry is a section one level below the one it is in
            if cell.cell_type == 'markdown': level = heading_level(cell.source) or level
            elif (trees := cell.parsed_() or []) and len(_show_docs(trees)) == len(trees): # the notebook's own
                cells[-1] = mk_cell('\n\n'.join(self.doc(ast.unparse(t), lvl) for t in trees), 'markdown')
            elif cell.directives_.keys() & _DOC_DIRS:
                j = i + 1
                while j < len(nbc) and getattr(nbc[j], 'has_sd', False): j += 1
                sds = [c.source for c in nbc[i+1:j]] # add_show_docs's cells for this export cell's definitions
                defs = _defs(cell.source) # `show_doc(Class.method)` (a @patch) is at `def method`'s line
                ents = [(defs.get(re.sub(r'^show_doc\((?:\w+\.)?(\w+)\)$', r'\1', s), 0), self.doc(s, lvl))
                        for s in sds]
                ents += [(ln, f"{'#'*lvl} {', '.join(nms)}\n\n```python\n{src}\n```")
                         for ln, nms, src in constants(cell.source, consts)]
                cells += [mk_cell(md, 'markdown') for _, md in sorted(ents, key=lambda e: e[0])] # source order
        self.nb.cells = cells

    def doc(self, call:str, level:int) -> str:
        "The markdown of `show_doc` call `call`, its heading at `level`"
        with warnings.catch_warnings(): # fastcore warns about objects without docments: they show without them
            warnings.simplefilter('ignore')
            return api_markdown(*eval(call, self.ns), level)

def site_links(cell) -> None:
    "The README's links to `nbs/NAME.ipynb` (from the repository's root) as links to the page of NAME, beside it"
    if cell.cell_type == 'markdown': cell.source = re.sub(r'\]\(nbs/([^)/]+\.ipynb)', r'](\1', cell.source)

# nbdev's FilterDefaults, less Quarto's and exec_show_docs, then the README's links made the site's
PROCS = [populate_language, add_show_docs, strip_ansi, hide_line, filter_stream_, rm_header_dash, ApiDocs, rm_export,
         clean_magics, hide_, strip_hidden_metadata, site_links]

def notebooks(nbs:Path=NBS) -> list[Path]:
    "The notebooks of the site, in file-name order (the sidebar's), index.ipynb (the home page) last"
    return sorted(p for p in nbs.glob('*.ipynb') if p.name != 'index.ipynb') + [nbs/'index.ipynb']

def process(src:Path, dst:Path, toc:list[str]|None=None) -> None:
    "Write notebook `src`, processed for the docs, to `dst`; a home page gets a hidden toctree of the `toc` pages"
    nb = read_nb(src)
    NBProcessor(nb=nb, procs=PROCS, rm_directives=True).process()
    if toc: nb.cells.append(mk_cell('```{toctree}\n:hidden:\n:maxdepth: 1\n\n' + '\n'.join(toc) + '\n```', 'markdown'))
    write_nb(nb, dst)
    nbformat.validate(nbformat.read(dst, as_version=4)) # raises on an invalid notebook, which myst-nb only logs

def build(nbs:Path=NBS, out:Path=OUT, src:Path=SRC, doctrees:Path=DOCTREES) -> int:
    "Process the notebooks in `nbs` into `src`, then build the site in `out` afresh with Sphinx; its exit status"
    for d in (src, out, doctrees.parent/'html'): shutil.rmtree(d, ignore_errors=True)
    src.mkdir(parents=True); out.mkdir(parents=True)
    files = notebooks(nbs)
    for nb in files: process(nb, src/nb.name, toc=[p.stem for p in files[:-1]] if nb.stem == 'index' else None)
    # -W: a warning fails the build (conf.py's suppress_warnings would list allowed ones); -E: read every page again.
    # Built beside `doctrees`, then moved to `out`: myst-nb writes a jupyter_execute/ folder beside its output folder.
    html, log = doctrees.parent/'html', doctrees.parent/WARNINGS_LOG.name
    cmd = [sys.executable, '-m', 'sphinx', '-b', 'html', '-q', '-E', '-W', '--keep-going', '-c', str(ROOT/'docs'),
           '-d', str(doctrees), '-w', str(log), str(src), str(html)]
    rc = subprocess.run(cmd, cwd=ROOT).returncode
    if html.exists(): shutil.rmtree(out); shutil.move(html, out)
    if log.exists(): shutil.move(log, out/WARNINGS_LOG.name)
    return rc

if __name__ == '__main__': sys.exit(build())
