"""Turn the notebooks, processed by nbdev (`_proc/*.ipynb`), into Markdown pages for MkDocs Material.

Quarto is the renderer nbdev is made for; it cannot be installed offline, so `docs/build.sh` uses this
script instead. It renders what Quarto would show: the notebook's prose, code (without `#|` directives),
outputs (text, tables, `show_doc` Markdown, PNG plots written next to the page), and maps Quarto-only
syntax (`:::` callouts, folded "Exported source" cells) to MkDocs Material equivalents.
Run by `docs/build.sh`; see `python docs/nb2md.py --help`."""
from __future__ import annotations
import argparse, ast, base64, html, re, shutil, sys
from pathlib import Path
import yaml
from fastcore.nbio import read_nb

_re_ansi = re.compile(r'\x1B(?:[@-Z\\-_]|\[[0-?]*[ -/]*[@-~])')
_re_directive = re.compile(r'^\s*#\|\s*([\w-]+)\s*(?::\s*(.*?))?\s*$')
_re_div_open = re.compile(r'^:::+\s*\{?\s*([^}]*?)\s*\}?\s*$')
_re_ipynb_link = re.compile(r'\]\((?!https?:)([\w./-]*?)([\w-]+)\.ipynb(#[^)]*)?\)')
_re_local_img = re.compile(r'!\[[^\]]*\]\((?!https?:|data:|/)([^)\s]+)')
_re_sd_head = re.compile(r'^(#{2,4}) ([\w.]+)\s*$', re.MULTILINE)
_callouts = dict(note='note', tip='tip', warning='warning', caution='warning', important='info')
_img_mimes = {'image/png': 'png', 'image/jpeg': 'jpg', 'image/gif': 'gif', 'image/svg+xml': 'svg'}

class DocsError(Exception):
    "A notebook that cannot become a docs page, with the file and the reason in the message"

def _flat_html(html:str) -> str:
    "HTML output with its lines unindented and blank lines dropped, so Markdown never reads it as a code block"
    html = html.strip()
    if '<pre' in html: return html
    return '\n'.join(l.strip() for l in html.splitlines() if l.strip())

def directives(src:str) -> tuple[dict, str]:
    "Split a code cell's leading `#| key: value` lines from its code"
    lines, d = src.splitlines(), {}
    while lines and (m := _re_directive.match(lines[0])):
        d[m.group(1)] = (m.group(2) or 'true').strip().strip('"\'')
        lines.pop(0)
    return d, '\n'.join(lines).strip('\n')

def _false(v): return str(v).lower() in ('false', 'no', '0')

def callouts(md:str) -> str:
    "Turn Quarto `::: {.callout-x}` fenced divs into MkDocs admonitions; drop other `:::` fences"
    out, stack = [], []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        l = lines[i]
        m = _re_div_open.match(l)
        if m is None: out.append('    '*sum(stack) + l if l.strip() else l)
        elif m.group(1) == '' and stack: stack.pop()
        else:
            kind = re.search(r'\.callout-(\w+)', m.group(1))
            if not kind: stack.append(0)
            else:
                title = re.search(r'title="([^"]*)"', m.group(1))
                title = title.group(1) if title else None
                if title is None and i+1 < len(lines) and lines[i+1].startswith('#'):
                    i += 1; title = lines[i].lstrip('#').strip()
                adm = _callouts.get(kind.group(1), 'note')
                out.append('    '*sum(stack) + f'!!! {adm}' + (f' "{title}"' if title else ''))
                out.append('')
                stack.append(1)
        i += 1
    return '\n'.join(out)

class Page:
    "One Markdown page written from one processed notebook into `dest`"
    def __init__(self, src:Path, # processed notebook (in `_proc`)
                 dest:Path, # folder of the Markdown sources
                 links:dict, # notebook stem -> page file name, for `.ipynb` links
                 site_url:str=''): # nbdev's `doc_host`+`doc_baseurl`: absolute links there become relative
        self.src, self.dest, self.links, self.site_url = src, dest, links, site_url.rstrip('/')
        self.nimg, self.in_reference = 0, False

    def fix_links(self, md:str) -> str:
        "Make links to our published site and to `.ipynb` files point at the local pages"
        if self.site_url: md = re.sub(re.escape(self.site_url)+r'/([\w-]+)\.html', r'\1.html', md)
        md = re.sub(r'\]\(([\w-]+)\.html(#[^)]*)?\)', lambda m: f']({m.group(1)}.md{m.group(2) or ""})'
                    if m.group(1) in self.links.values() else m.group(0), md)
        return _re_ipynb_link.sub(lambda m: f']({self.links.get(m.group(2), m.group(2))}.md{m.group(3) or ""})', md)

    def image(self, data:str, ext:str) -> str:
        "Write one output image next to the page; return its Markdown"
        self.nimg += 1
        rel = f'{self.name}_files/output-{self.nimg}.{ext}'
        p = self.dest/rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if ext == 'svg': p.write_text(data if isinstance(data, str) else ''.join(data))
        else: p.write_bytes(base64.b64decode(data))
        return f'![{self.title}: figure {self.nimg}]({rel}){{ .nb-figure }}'

    def output(self, o, asis:bool=False) -> str:
        "Markdown for one cell output"
        if o.output_type == 'stream':
            return _pre(_re_ansi.sub('', _s(o.text)), 'nb-stderr' if o.name == 'stderr' else 'nb-stdout')
        if o.output_type == 'error':
            return _pre(_re_ansi.sub('', '\n'.join(o.traceback)), 'nb-error')
        data = o.get('data', {})
        for mime, ext in _img_mimes.items():
            if mime in data: return self.image(data[mime], ext)
        if 'text/markdown' in data and 'text/html' in data and _s(data['text/markdown']).lstrip().startswith('```html'):
            data = {k: v for k,v in data.items() if k != 'text/markdown'}  # fastprogress: its Markdown is HTML source
        if 'text/markdown' in data:
            md = self.fix_links(_s(data['text/markdown']))
            if asis and self.in_reference: md = _re_sd_head.sub(lambda m: f'#### {m.group(2)}', md)  # out of the page's TOC
            return _anchor_showdoc(md) if asis else f'<div class="nb-output" markdown="1">\n\n{md}\n\n</div>'
        if 'text/html' in data: return f'<div class="nb-output nb-html" markdown="0">\n{_flat_html(_s(data["text/html"]))}\n</div>'
        if 'text/plain' in data: return _pre(_s(data['text/plain']), 'nb-result')
        return ''

    def code(self, cell) -> list[str]:
        "Markdown blocks for one code cell: its source (folded for exported code) and its outputs"
        d, src = directives(cell.source)
        if _false(d.get('include', 'true')): return []
        res = []
        if src and not _false(d.get('echo', 'true')):
            block = f'```python\n{src}\n```'
            if 'code-fold' in d and not _false(d['code-fold']):
                mark = '???+' if d['code-fold'] == 'show' else '???'
                block = f'{mark} example "{d.get("code-summary", "Code")}"\n\n' + '\n'.join('    '+l if l else l for l in block.splitlines())
            res.append(block)
        if not _false(d.get('output', 'true')):
            res += [o for o in (self.output(o, asis=d.get('output') == 'asis') for o in cell.get('outputs', [])) if o]
        return res

    def render(self) -> tuple[str, str]:
        "Write the page; return (file name, title)"
        try: nb = read_nb(self.src)
        except Exception as e: raise DocsError(f'{self.src}: not a readable notebook ({e})') from e
        fm = _frontmatter(nb)
        self.title = fm.get('title')
        if not self.title: raise DocsError(f'{self.src.name}: no title; the first markdown cell must be `# Title` (then `> summary`)')
        self.name = self.links[self.src.stem]
        blocks = [f'# {self.title}']
        if fm.get('description'): blocks.append(f'{fm["description"]}\n{{ .nb-description }}')
        for c in nb.cells:
            if c.cell_type == 'markdown' and _s(c.source).strip():
                # the page's table of contents lists the taught path; the `## Reference` section's API docs are left out
                for l in _s(c.source).splitlines():
                    if l.startswith('## '): self.in_reference = l[3:].strip().lower().startswith('reference')
                blocks.append(self.fix_links(callouts(c.source)))
            elif c.cell_type == 'code': blocks += self.code(c)
        md = '\n\n'.join(blocks) + '\n'
        (self.dest/f'{self.name}.md').write_text(md)
        return f'{self.name}.md', self.title

def _s(x): return x if isinstance(x, str) else ''.join(x)
def _pre(text:str, cls:str) -> str: return f'<pre class="nb-output {cls}"><code>{html.escape(text.rstrip())}</code></pre>'

def _anchor_showdoc(md:str) -> str:
    "Give `show_doc` headings the anchors nbdev's symbol index links to (`data.html#parse_name`)"
    return _re_sd_head.sub(lambda m: f'{m.group(1)} {m.group(2)} {{ id="{m.group(2).lower()}" }}', md)

def _frontmatter(nb) -> dict:
    "The YAML frontmatter nbdev puts in the first raw cell"
    for c in nb.cells:
        if c.cell_type == 'raw' and (m := re.match(r'\s*---\s*\n(.*?)\n---', c.source, re.S)):
            return yaml.safe_load(m.group(1)) or {}
    return {}

def page_name(nb_path:Path) -> str:
    "The page name Quarto gives a processed notebook: `output-file` from its frontmatter, else its stem"
    try: fm = _frontmatter(read_nb(nb_path))
    except Exception as e: raise DocsError(f'{nb_path}: not a readable notebook ({e})') from e
    return Path(fm['output-file']).stem if fm.get('output-file') else nb_path.stem

def module_api(mod_file:Path) -> tuple[list, dict]:
    "`__all__` and first docstring lines (by qualified name) of an exported module, without importing it"
    text = mod_file.read_text()
    tree, lines = ast.parse(text), text.splitlines()
    names, docs = [], {}
    for n in tree.body:
        if isinstance(n, ast.Assign) and any(getattr(t, 'id', None) == '__all__' for t in n.targets):
            names = ast.literal_eval(n.value)
        elif isinstance(n, ast.Assign):  # a constant: its trailing comment, if any, says what it is
            comment = lines[n.lineno-1].partition('#')[2].strip() if "'" not in lines[n.lineno-1] else ''
            for t in n.targets:
                if isinstance(t, ast.Name): docs[t.id] = comment
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            docs[n.name] = (ast.get_docstring(n) or '').split('\n')[0]
            if isinstance(n, ast.ClassDef):
                for m in n.body:
                    if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        docs[f'{n.name}.{m.name}'] = (ast.get_docstring(m) or '').split('\n')[0]
    return names, docs

def api_page(root:Path, # project root
             dest:Path, # folder of the Markdown pages
             pages:dict, # page name -> the anchors it defines
             titles:dict): # page name -> its title
    "Write `api.md`: every public symbol of the package, with its one-line doc, linked to its `show_doc`"
    from nbdev.config import get_config
    cfg = get_config(root)
    idx = cfg.lib_path/'_modidx.py'
    if not idx.exists(): return None
    ns = {}
    exec(idx.read_text(), ns)
    lines = ['# API reference', '',
             'Every public function and class of the package, one line each; the link goes to its full '
             'documentation (signature, parameters, examples) in the notebook that defines it.', '']
    for mod, syms in ns['d']['syms'].items():
        mod_file = root/mod.replace('.', '/')
        mod_file = mod_file.with_suffix('.py') if mod_file.with_suffix('.py').exists() else mod_file/'__init__.py'
        if not mod_file.exists(): continue
        public, docs = module_api(mod_file)
        qual = {sym[len(mod)+1:]: url for sym, (url, _) in syms.items()}
        page = Path(next(iter(qual.values()), '').partition('#')[0]).stem
        rows, mod_pages = [], [page] if page in titles else []
        for name in public:
            for q in [name] + [k for k in qual if k.startswith(name+'.') and not any(p.startswith('_') for p in k.split('.')[1:])]:
                p, _, anchor = qual.get(q, f'{page}.html').partition('#')
                p = Path(p).stem
                if p in titles and p not in mod_pages: mod_pages.append(p)
                link = None if p not in pages else f'{p}.md#{anchor}' if anchor in pages[p] else f'{p}.md'
                nm = f'[`{q}`]({link})' if link else f'`{q}`'
                rows.append(f'| {nm} | {docs.get(q, "").replace("|", "&#124;")} |')
        where = ', '.join(f'[{titles[p]}]({p}.md)' for p in mod_pages)
        if rows: lines += [f'## `{mod}`', '', *([f'Written in: {where}.', ''] if where else []),
                           '| name | what it does |', '|---|---|', *rows, '']
    (dest/'api.md').write_text('\n'.join(lines))
    return 'api.md'

_hint = ("nbdev runs every cell that imports, exports or show_docs something to render the API docs, "
         "so such cells must not need earlier test cells: keep imports in cells of their own (nbdev FAQ)")

def mixed_import_cells(nbs_path:Path) -> list[str]:
    "Cells that nbdev runs to render docs because they import something, but that also do other work"
    res = []
    for nb in sorted(nbs_path.glob('*.ipynb')):
        for c in read_nb(nb).cells:
            if c.cell_type != 'code': continue
            d, src = directives(c.source)
            if d.keys() & {'export', 'exporti', 'exports'} or _false(d.get('eval', 'true')) or 'nbdev_export()' in src: continue
            try: tree = ast.parse('\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!'))))
            except SyntaxError: continue
            imp = (ast.Import, ast.ImportFrom)
            if any(isinstance(n, imp) for n in ast.walk(tree)) and not all(isinstance(n, imp) for n in tree.body):
                res.append(f'{nb.name}: the cell that starts {src.splitlines()[0][:70]!r}')
    return res

def process_notebooks(root:Path):
    "Process the notebooks into `_proc` as `nbdev-proc-nbs` does, without its step that downloads Quarto"
    from nbdev.config import get_config
    from nbdev.serve import proc_nbs
    nbs_path = get_config(root).nbs_path
    # subfolders of nbs/ (data, runs, temporary files) are not pages: skip them all
    try: return proc_nbs(str(nbs_path), n_workers=0, skip_folder_re='.')
    except Exception as e:
        mixed = '\n  '.join(mixed_import_cells(nbs_path))
        raise DocsError(f'nbdev could not process a notebook: {e}' +
                        (f'\n({_hint})\nCells that mix imports with other code:\n  {mixed}' if mixed else '')) from e

def build(root:Path, # project root (holds pyproject.toml)
          proc:Path, # nbdev's processed notebooks (`_proc`)
          dest:Path, # folder to write the Markdown pages and `mkdocs.yml` into (emptied first)
          config:Path): # our MkDocs config, inherited by the generated one
    "Write one Markdown page per notebook in `nbs/` (notebook order, `index` first) and the MkDocs config"
    from nbdev.config import get_config
    cfg = get_config(root)
    nbs = sorted(cfg.nbs_path.glob('*.ipynb'), key=lambda p: (p.stem != 'index', p.name))
    if not nbs: raise DocsError(f'no notebooks in {cfg.nbs_path}')
    missing = [p.name for p in nbs if not (proc/p.name).exists()]
    if missing: raise DocsError(f'not processed by nbdev (run nbdev-proc-nbs first): {", ".join(missing)}')
    if dest.exists(): shutil.rmtree(dest)
    docs = dest/'docs'
    docs.mkdir(parents=True)
    links = {p.stem: page_name(proc/p.name) for p in nbs}
    site_url = f"{cfg.get('doc_host', '')}{cfg.get('doc_baseurl', '')}"
    pages = {}
    for p in nbs:
        fname, title = Page(proc/p.name, docs, links, site_url).render()
        pages[p.stem] = {('Home' if p.stem == 'index' else title): fname}
    nav = sidebar_nav(cfg.nbs_path/'sidebar.yml', pages)
    if 'index' not in links:  # no index notebook: the README is the home page
        readme = root/'README.md'
        if readme.exists(): home = Page(readme, docs, links, site_url).fix_links(readme.read_text())
        else:
            print('docs: warning: no nbs/index.ipynb and no README.md; the home page only lists the notebooks', file=sys.stderr)
            home = '\n'.join([f"# {cfg.get('title', cfg.get('lib_name'))}", '', cfg.get('description', ''), '',
                              *[f'- [{t}]({f})' for o in pages.values() for t,f in o.items()]])
        (docs/'index.md').write_text(home)
        nav.insert(0, {'Home': 'index.md'})
    if (config.parent/'extra.css').exists(): shutil.copy(config.parent/'extra.css', docs/'extra.css')
    _copy_local_images(cfg.nbs_path, docs)
    anchors = {n: set(re.findall(r'\bid="([^"]+)"', (docs/f'{n}.md').read_text())) for n in links.values()}
    _drop_missing_symbol_anchors(docs, anchors)
    titles = {Path(f).stem: t for o in pages.values() for t,f in o.items()}
    api = api_page(root, docs, anchors, titles)
    if api: nav.append({'API reference': api})
    conf = {'INHERIT': str(config.resolve()), 'docs_dir': 'docs', 'nav': nav,
            'site_description': cfg.get('description', ''), 'site_name': cfg.get('title', cfg.get('lib_name'))}
    (dest/'mkdocs.yml').write_text(yaml.safe_dump(conf, sort_keys=False, allow_unicode=True))
    return nav

def _drop_missing_symbol_anchors(docs:Path, anchors:dict):
    "Point links to symbols documented without `show_doc` at the top of their page (nbdev links every exported name)"
    def fix(m):
        page, anchor = m.group(1), m.group(2)
        return m.group(0) if page not in anchors or anchor in anchors[page] else f'({page}.md)'
    for md in docs.glob('*.md'): md.write_text(re.sub(r'\((\w+)\.md#([\w.]+)\)', fix, md.read_text()))

def sidebar_nav(sidebar:Path, # Quarto's `sidebar.yml` (may be absent)
                pages:dict): # notebook stem -> {title: page file}, in notebook order
    "MkDocs nav in the order and sections of `sidebar.yml`; the home page first, unlisted notebooks last"
    used = {'index'}
    def walk(items):
        res = []
        for it in items or []:
            if isinstance(it, str): it = {'href': it}
            if 'section' in it:
                sub = walk(it.get('contents'))
                if sub: res.append({it['section']: sub})
            elif (stem := Path(str(it.get('href') or it.get('file') or '')).stem) in pages and stem not in used:
                used.add(stem); res.append(pages[stem])
        return res
    try: items = yaml.safe_load(sidebar.read_text())['website']['sidebar']['contents'] if sidebar.exists() else []
    except (yaml.YAMLError, KeyError, TypeError) as e: raise DocsError(f'{sidebar}: not a Quarto sidebar ({e})') from e
    nav = ([pages['index']] if 'index' in pages else []) + walk(items)
    left = [k for k in pages if k not in used]
    if left and sidebar.exists(): print(f'docs: warning: not in {sidebar.name}, put last: {", ".join(left)}', file=sys.stderr)
    return nav + [pages[k] for k in left]

def _copy_local_images(nbs_path:Path, docs:Path):
    "Copy images that markdown cells link by relative path (e.g. `images/x.png`) next to the pages"
    for md in docs.glob('*.md'):
        for rel in _re_local_img.findall(md.read_text()):
            src = nbs_path/rel
            if '..' not in Path(rel).parts and src.is_file() and not (docs/rel).exists():
                (docs/rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, docs/rel)

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--root', type=Path, default=Path('.'), help='project root')
    p.add_argument('--proc', type=Path, default=None, help="processed notebooks (default: ROOT/_proc)")
    p.add_argument('--dest', type=Path, required=True, help='folder for the Markdown pages and generated mkdocs.yml')
    p.add_argument('--no-proc', action='store_true', help='use the processed notebooks already in PROC')
    p.add_argument('--config', type=Path, default=Path(__file__).parent/'mkdocs.yml', help='base MkDocs config')
    a = p.parse_args(argv)
    root = a.root.resolve()
    try:
        if not a.no_proc: print('docs: processing notebooks (nbdev) into _proc/', flush=True); process_notebooks(root)
        print(f'docs: writing Markdown pages into {a.dest}', flush=True)
        nav = build(root, a.proc or root/'_proc', a.dest, a.config)
    except DocsError as e: sys.exit(f'docs: error: {e}')
    print('  pages:', yaml.safe_dump(nav, sort_keys=False, allow_unicode=True).replace('\n', '\n    ').rstrip())

if __name__ == '__main__': main()
