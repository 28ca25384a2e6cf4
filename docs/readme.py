"""Write README.md from nbs/index.ipynb (what `nbdev-readme` does with Quarto, which cannot be installed offline).
Usage: python docs/readme.py   (run by `make readme`)"""
import re
from pathlib import Path
import nbformat
from nbconvert import MarkdownExporter

ROOT = Path(__file__).resolve().parents[1]

def readme(nb_path=ROOT/'nbs'/'index.ipynb', dest=ROOT/'README.md'):
    "Render the notebook's non-hidden cells (prose, code, outputs) as GitHub Markdown into `dest`"
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells = [c for c in nb.cells if not c.source.lstrip().startswith('#| hide')]
    md,_ = MarkdownExporter().from_notebook_node(nb)
    md = re.sub(r'\]\((\d\d_\w+\.ipynb)\)', r'](nbs/\1)', md)  # the notebooks sit in nbs/, beside index.ipynb, not beside README.md
    dest.write_text(f"<!-- generated from nbs/index.ipynb by `make readme`: edit the notebook, not this file -->\n\n{md.strip()}\n")
    return dest

if __name__ == '__main__': print(f"wrote {readme()}")
