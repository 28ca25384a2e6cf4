"""The course notebooks as students read them: stored outputs that are clean, and the shape of a lesson.

Every numbered notebook ends with a conclusion, a questionnaire and further research; its stored outputs have
no stderr, no warnings, no tracebacks and no local or temporary paths; one `show_doc` per cell; Markdown is
displayed, not printed; the taught path has short code cells; no notebook imports a module taught later."""
import json, re
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/'nbs'
LESSONS = sorted(p for p in NBS.glob('[0-9][0-9]_*.ipynb'))
LOCAL_PATH = re.compile(r'(/tmp/|/var/folders/|/work/|/root/|/home/\w+/|C:\\\\Users|\.venv/|site-packages)')
MAX_TAUGHT_LINES = 25

def cells(nb:Path) -> list: return json.loads(nb.read_text())['cells']
def src(c) -> str: return ''.join(c['source'])
def directives(c) -> set: return {l[3:].split()[0] for l in src(c).splitlines() if l.startswith('#| ') and len(l) > 3}

def out_texts(c):
    "(kind, text) of every stored output of a code cell"
    for o in c.get('outputs', []):
        if o['output_type'] == 'stream': yield o['name'], ''.join(o['text'])
        elif o['output_type'] == 'error': yield 'error', o.get('ename', '') + ': ' + o.get('evalue', '')
        else:
            for mime, v in o.get('data', {}).items():
                if mime.startswith('text/') or mime == 'application/json': yield mime, v if isinstance(v, str) else ''.join(map(str, v))

def module_of(nb:Path):
    "The `default_exp` module a notebook exports to, if any"
    for c in cells(nb):
        if m := re.search(r'^#\|\s*default_exp\s+(\S+)', src(c), re.M): return m.group(1)

def test_lessons_exist(): assert len(LESSONS) >= 7, [p.name for p in LESSONS]

@pytest.mark.parametrize('nb', LESSONS, ids=lambda p: p.name)
def test_stored_outputs_are_clean(nb):
    "No stderr, warnings, tracebacks or local paths in what the docs site shows"
    bad = []
    for i,c in enumerate(cells(nb)):
        if c['cell_type'] != 'code': continue
        for kind, text in out_texts(c):
            if kind in ('stderr', 'error'): bad.append(f'cell {i}: stored {kind}: {text[:120]!r}')
            elif re.search(r'\b\w*Warning\b:', text): bad.append(f'cell {i}: stored warning: {text[:120]!r}')
            elif m := LOCAL_PATH.search(text): bad.append(f'cell {i}: local path {m.group(0)!r} in {text[max(0, m.start()-60):m.end()+40]!r}')
    assert not bad, '\n'.join(bad)

@pytest.mark.parametrize('nb', LESSONS, ids=lambda p: p.name)
def test_lesson_shape(nb):
    "Conclusion, a questionnaire of 8+ numbered questions, further research; in that order"
    md = [src(c) for c in cells(nb) if c['cell_type'] == 'markdown']
    heads = [l.strip() for s in md for l in s.splitlines() if l.startswith('## ')]
    for h in ('## Conclusion', '## Questionnaire', '## Further research'): assert h in heads, f'{nb.name}: no {h!r}'
    assert heads.index('## Conclusion') < heads.index('## Questionnaire') < heads.index('## Further research')
    text = '\n'.join(md)
    q = text.split('## Questionnaire', 1)[1].split('\n## ', 1)[0]
    assert len(re.findall(r'^\s*\d+\.\s', q, re.M)) >= 8, f'{nb.name}: fewer than 8 numbered questions'
    fr = text.split('## Further research', 1)[1].split('\n## ', 1)[0]
    assert 2 <= len(re.findall(r'^\s*(\d+\.|-)\s', fr, re.M)) <= 6, f'{nb.name}: further research wants 2-4 exercises'

@pytest.mark.parametrize('nb', LESSONS, ids=lambda p: p.name)
def test_rendering_rules(nb):
    "One `show_doc` per cell, Markdown displayed not printed, short code cells on the taught path"
    bad = []
    for i,c in enumerate(cells(nb)):
        if c['cell_type'] != 'code': continue
        s = src(c)
        if s.count('show_doc(') > 1: bad.append(f'cell {i}: {s.count("show_doc(")} show_doc calls (one per cell renders)')
        if re.search(r'print\((summary_markdown|markdown_table)\(', s): bad.append(f'cell {i}: prints Markdown: use display(Markdown(...))')
        d = directives(c)
        taught = not d & {'export', 'exports', 'hide', 'exporti', 'default_exp'}
        n = len([l for l in s.splitlines() if l.strip()])
        if taught and n > MAX_TAUGHT_LINES: bad.append(f'cell {i}: {n} lines on the taught path (hide it, or split it)')
    assert not bad, '\n'.join(bad)

LATER_OK = {('07_cli.ipynb', 'app')}  # the `app` subcommand loads the app notebook's module only when it runs

def test_no_notebook_imports_a_later_module():
    order = {module_of(nb): k for k,nb in enumerate(LESSONS) if module_of(nb)}
    bad = []
    for k,nb in enumerate(LESSONS):
        for c in cells(nb):
            if c['cell_type'] != 'code': continue
            for m in re.findall(r'(?:from|import)\s+breakhis_clf\.(\w+)|from\s+\.(\w+)\s+import', src(c)):
                mod = m[0] or m[1]
                if order.get(mod, -1) > k and (nb.name, mod) not in LATER_OK: bad.append(f'{nb.name} imports breakhis_clf.{mod}, taught later')
    assert not bad, '\n'.join(bad)
