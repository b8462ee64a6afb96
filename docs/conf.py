"""Sphinx configuration of the docs site (`make docs`; docs/build.py runs Sphinx with `-c docs`).

Why Sphinx and not nbdev's `nbdev-docs`: that renders with Quarto, and Quarto can not be installed here. PyPI's
`quarto-cli` is a 5 KB source package whose setup.py downloads the Quarto binary from GitHub's releases when it is
built (`Error downloading Quarto: <urlopen error [Errno -2] Name or service not known>`, then `ValueError: nothing to
open`: no network beyond the package registries), and Debian has no `quarto` package. myst-nb renders the stored
notebook outputs (tables, plots) without executing anything.
"""
import fastai_repro

project = 'fastai_repro'
release = version = fastai_repro.__version__
extensions = ['myst_nb']
root_doc = 'index' # nbs/index.ipynb, the README's notebook; its hidden toctree (added by build.py) is the sidebar
exclude_patterns = ['**.ipynb_checkpoints']

nb_execution_mode = 'off' # the outputs stored in the notebooks, as `fastai-repro nbcheck` checks them; nothing re-runs
nb_render_markdown_format = 'myst' # markdown outputs (the tutorials' `Markdown` tables) with their tables rendered
nb_output_stderr = 'show' # the stored warnings are part of what the tutorials show

html_theme = 'furo'
html_title = f'fastai_repro {version}'
html_show_sourcelink = False # the pages' sources are the processed notebooks in _proc/, not files of the repository
html_copy_source = False

# docs/build.py runs Sphinx with -W: every warning fails the build (missing references, images or toctree entries,
# notebooks that do not parse, non-consecutive headings). None is allowed, as none is given now: a kind to allow would
# be named here, with why.
suppress_warnings = []
