"""The docs site: `docs/build.sh` builds it offline from the notebooks, and headless Chromium shows it.

The build test needs only the dev extras; the browser tests skip, saying why, when Chromium, its driver
or selenium is missing (Debian: `apt-get install chromium chromium-driver`)."""
import functools, http.server, json, os, re, shutil, subprocess, sys, threading
from pathlib import Path
import pytest, yaml

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/'nbs'
sys.path.insert(0, str(ROOT/'docs'))
import nb2md

def nb_title(nb:Path) -> str:
    "The `# Title` of a notebook: its first markdown heading of level 1"
    for c in json.loads(nb.read_text())['cells']:
        if c['cell_type'] == 'markdown':
            m = re.match(r'#\s+(.+)', ''.join(c['source']).strip())
            if m: return m.group(1).strip()
    raise AssertionError(f'{nb.name} has no `# Title` markdown cell')

def notebooks(): return sorted(p for p in NBS.glob('*.ipynb') if p.stem != 'index')

def h1(html:str) -> str:
    "Text of the page's first `<h1>`, tags and permalink stripped"
    m = re.search(r'<h1[^>]*>(.*?)</h1>', html, re.S)
    return re.sub(r'<[^>]+>|¶|&para;', '', m.group(1)).strip() if m else ''

# ---- the build, shared by the tests below (a few seconds once notebooks are processed into _proc) ----

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    if not notebooks(): pytest.skip('no notebooks in nbs/ yet')
    if not shutil.which('mkdocs', path=str(Path(sys.executable).parent)): pytest.skip('mkdocs not installed (dev extras)')
    out, work = tmp_path_factory.mktemp('site'), tmp_path_factory.mktemp('docs_md')
    r = subprocess.run(['bash', str(ROOT/'docs/build.sh'), str(Path(sys.executable).parent), str(out)],
                       env={**os.environ, 'DOCS_WORK': str(work)}, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f'docs/build.sh failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}'
    return out, work

def test_one_page_per_notebook_with_its_title(site):
    out, work = site
    for nb in notebooks():
        page = out/f'{nb2md.page_name(ROOT/"_proc"/nb.name)}.html'
        assert page.exists(), f'no page for {nb.name}'
        assert h1(page.read_text()) == nb_title(nb), f'{page.name}: title is not the notebook\'s `# Title`'
    assert (out/'index.html').exists()

def test_nav_follows_notebook_order(site):
    "The site's navigation lists the notebooks in course order (00_, 01_, ...), home first, API reference last"
    out, work = site
    conf = yaml.safe_load((work/'mkdocs.yml').read_text())
    def flat(nav): return [f for o in nav for v in o.values() for f in (flat(v) if isinstance(v, list) else [v])]
    pages = flat(conf['nav'])
    want = [f'{nb2md.page_name(ROOT/"_proc"/nb.name)}.md' for nb in notebooks()]
    assert pages[0] == 'index.md' and pages[-1] == 'api.md'
    assert [p for p in pages if p in want] == want
    html = (out/'index.html').read_text()  # and the rendered navigation shows them in that order
    pos = [html.find(f'href="{p[:-3]}.html"') for p in want]
    assert -1 not in pos and pos == sorted(pos), pos

def test_pages_show_code_outputs_and_plots(site):
    "Outputs are on the pages: show_doc docs, text, and PNG plots that exist as files"
    out, _ = site
    html = {p.name: p.read_text() for p in out.glob('*.html')}
    imgs = [(n, re.search(r'src="([^"]+)"', t).group(1)) for n, h in html.items()
            for t in re.findall(r'<img [^>]*>', h) if 'nb-figure' in t]
    assert imgs, 'no notebook plot on any page'
    from PIL import Image
    for n, src in imgs:
        with Image.open(out/src) as im: im.load()  # the whole file decodes, not only its header
        assert min(im.size) > 10, f'{n}: {src} is {im.size}'
    assert any('<pre class="nb-output' in h for h in html.values())
    assert not any(re.search(r'^\s*#\|', h, re.M) for h in html.values()), 'nbdev directives left in a page'
    assert not any(re.search(r'^:::', h, re.M) for h in html.values()), 'Quarto ::: fences left in a page'

def test_toc_lists_the_taught_path(site):
    "Each lesson's table of contents has its sections, and none of the API docs of its `## Reference` section"
    out, _ = site
    for nb in notebooks():
        html = (out/f'{nb2md.page_name(ROOT/"_proc"/nb.name)}.html').read_text()
        assert 'md-nav--secondary' in html, f'{nb.name}: no table of contents'
        toc = html.split('md-nav--secondary', 1)[1].split('class="md-content"', 1)[0]  # the TOC sidebar (nested navs)
        links = set(re.findall(r'href="#([^"]+)"', toc))
        assert {'conclusion', 'questionnaire', 'further-research'} <= links, (nb.name, sorted(links))
        if 'id="reference"' not in html: continue
        ref = html.split('id="reference"', 1)[1]
        documented = set(re.findall(r'<h4 id="([^"]+)"', ref))
        assert not links & documented, f'{nb.name}: Reference symbols in the TOC: {sorted(links & documented)}'

def test_api_reference_lists_public_symbols(site):
    out, _ = site
    api = (out/'api.html').read_text()
    for mod in sorted((ROOT/'breakhis_clf').glob('[!_]*.py')):
        public, _ = nb2md.module_api(mod)
        for name in public: assert f'<code>{name}</code>' in api, f'{mod.stem}.{name} missing from api.html'

def test_broken_link_fails_the_build(tmp_path):
    "MkDocs runs --strict: a link to a page that does not exist stops the build and names the link"
    def render(md):
        work = tmp_path/'work'
        (work/'docs').mkdir(parents=True, exist_ok=True)
        (work/'docs/index.md').write_text(md)
        (work/'docs/page.md').write_text('# A page\n')
        (work/'mkdocs.yml').write_text(yaml.safe_dump({'INHERIT': str(ROOT/'docs/mkdocs.yml'), 'docs_dir': 'docs',
                                                       'nav': [{'Home': 'index.md'}, {'Page': 'page.md'}]}))
        return subprocess.run(['bash', str(ROOT/'docs/build.sh'), str(Path(sys.executable).parent), str(tmp_path/'site')],
                              env={**os.environ, 'DOCS_WORK': str(work), 'DOCS_RENDER_ONLY': '1'},
                              capture_output=True, text=True, timeout=300)
    ok = render('# Home\n\nSee [the page](page.md).\n')
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = render('# Home\n\nSee [the 07 notebook](07_missing.md).\n')
    assert bad.returncode != 0 and '07_missing.md' in bad.stdout + bad.stderr

# ---- the Quarto configuration (nbdev-preview / nbdev-docs where Quarto is installed) ----

def test_sidebar_lists_every_notebook_in_order():
    "nbs/sidebar.yml (custom_sidebar) names each notebook once, in file order, and nothing that is not there"
    items = yaml.safe_load((NBS/'sidebar.yml').read_text())['website']['sidebar']['contents']
    def flat(xs): return [f for x in xs for f in (flat(x['contents']) if isinstance(x, dict) else [x])]
    want = ['index.ipynb'] * (NBS/'index.ipynb').exists() + [p.name for p in notebooks()]
    assert flat(items) == want, f'nbs/sidebar.yml lists {flat(items)}; nbs/ has {want}'

def test_quarto_config_matches_nbdev(tmp_path, monkeypatch):
    "nbdev.yml is what nbdev writes from pyproject.toml (so nbdev-docs keeps it); _quarto.yml uses it and styles.css"
    from nbdev.quarto import refresh_quarto_yml
    shutil.copy(ROOT/'pyproject.toml', tmp_path)
    (tmp_path/'nbs').mkdir()
    monkeypatch.chdir(tmp_path)
    refresh_quarto_yml()
    assert (NBS/'nbdev.yml').read_text() == (tmp_path/'nbs/nbdev.yml').read_text()
    q = yaml.safe_load((NBS/'_quarto.yml').read_text())
    assert q['project']['type'] == 'website' and set(q['metadata-files']) == {'nbdev.yml', 'sidebar.yml'}
    assert (NBS/q['format']['html']['css']).exists()

# ---- the converter's handling of nbdev and Quarto syntax ----

def test_directives_are_split_from_code():
    d, src = nb2md.directives('#| echo: false\n#| output: asis\nshow_doc(f)')
    assert (d, src) == ({'echo': 'false', 'output': 'asis'}, 'show_doc(f)')
    assert nb2md.directives('x = 1  #| not a directive') == ({}, 'x = 1  #| not a directive')

def test_quarto_callouts_become_admonitions():
    md = nb2md.callouts('Before\n\n::: {.callout-warning}\n## Careful\nDo not mix patients.\n:::\n\nAfter')
    assert md == 'Before\n\n!!! warning "Careful"\n\n    Do not mix patients.\n\nAfter'
    assert nb2md.callouts('::: {.column-margin}\nside note\n:::') == 'side note'

def test_notebook_without_title_fails_naming_it(tmp_path):
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell('no title here')])
    nbformat.write(nb, tmp_path/'07_untitled.ipynb')
    with pytest.raises(nb2md.DocsError, match='07_untitled.ipynb: no title'):
        nb2md.Page(tmp_path/'07_untitled.ipynb', tmp_path, {'07_untitled': '07_untitled'}).render()

# ---- in a browser: headless Chromium over a loopback HTTP server ----

def _chrome():
    "A browser and its matching chromedriver: (binary, driver, None), or (None, None, why not)"
    try: import selenium  # noqa: F401
    except ImportError: return None, None, 'selenium not installed (dev extras)'
    pairs = [(os.environ.get('CHROME_BIN'), os.environ.get('CHROMEDRIVER')),  # chosen by hand
             (shutil.which('chromium'), shutil.which('chromedriver') or '/usr/bin/chromedriver'),  # Debian's pair
             (shutil.which('google-chrome'), os.path.join(os.environ.get('CHROMEWEBDRIVER', '/nonexistent'), 'chromedriver'))]  # GitHub's
    for exe, drv in pairs:
        if exe and drv and Path(drv).is_file(): return exe, drv, None
    return None, None, 'Chromium or chromedriver not installed (Debian: apt-get install chromium chromium-driver)'

def headless_chrome(profile_dir):
    "A headless Chromium driver that never reaches the network (skips the test, saying why, when it is missing)"
    exe, drv, why = _chrome()
    if why: pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    os.environ.setdefault('SE_OFFLINE', 'true')  # Selenium Manager must never download a driver or browser
    opts = webdriver.ChromeOptions()
    opts.binary_location = exe
    for a in ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-dev-shm-usage',
              '--disable-component-update', '--no-first-run', '--window-size=1280,1000',
              f'--user-data-dir={profile_dir}']: opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(drv), options=opts)
    driver.set_page_load_timeout(60)
    return driver

@pytest.fixture(scope='module')
def browser(site, tmp_path_factory):
    driver = headless_chrome(tmp_path_factory.mktemp("chrome-profile"))
    handler = functools.partial(_QuietHandler, directory=str(site[0]))
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try: yield driver, f'http://127.0.0.1:{httpd.server_address[1]}'
    finally:
        driver.quit(); httpd.shutdown(); httpd.server_close()

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass

def _open(driver, url):
    "Load `url`; return its `<h1>` text, title and (src, naturalWidth) of its notebook plots once loaded"
    from selenium.webdriver.support.ui import WebDriverWait
    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(
        "return document.readyState == 'complete' && [...document.images].every(i => i.complete)"))
    return driver.execute_script("""return {h1: ((document.querySelector('article h1, h1') || {}).innerText || '').replace('¶', ''),
        title: document.title, rendered: document.querySelector('.md-content') !== null,
        imgs: [...document.querySelectorAll('img.nb-figure')].map(i => [i.getAttribute('src'), i.naturalWidth])}""")

def test_home_page_in_browser(browser, site):
    driver, base = browser
    r = _open(driver, f'{base}/index.html')
    assert r['rendered'], 'not a rendered MkDocs page'
    want = nb_title(NBS/'index.ipynb') if (NBS/'index.ipynb').exists() else None
    assert r['h1'].strip() and (want is None or r['h1'].strip() == want), r
    assert 'breakhis-clf' in r['title']

def test_notebook_pages_and_plots_in_browser(browser, site, tmp_path):
    "Every notebook page loads with its title, and every plot on it is a decoded image (naturalWidth > 0)"
    driver, base = browser
    n_imgs = 0
    for nb in notebooks():
        name = nb2md.page_name(ROOT/'_proc'/nb.name)
        r = _open(driver, f'{base}/{name}.html')
        assert r['h1'].strip() == nb_title(nb), (name, r['h1'])
        assert nb_title(nb) in r['title'], (name, r['title'])
        bad = [src for src, w in r['imgs'] if not w]
        assert not bad, f'{name}.html: plots that did not load: {bad}'
        n_imgs += len(r['imgs'])
    assert n_imgs > 0, 'no plot shown on any notebook page'
    assert driver.save_screenshot(str(tmp_path/'last_page.png')) and (tmp_path/'last_page.png').stat().st_size > 10_000

def test_readme_links_resolve():
    "Every relative link in README.md (generated from nbs/index.ipynb) points at a file of the repository"
    root = Path(__file__).resolve().parents[1]
    links = re.findall(r'\]\(([^)#\s]+)\)', (root/'README.md').read_text())
    local = [l for l in links if not re.match(r'[a-z]+:', l)]
    assert local, 'no relative links found: the course table should link its notebooks'
    assert [l for l in local if not (root/l).exists()] == []
