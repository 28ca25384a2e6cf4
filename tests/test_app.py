"The Gradio app (`breakhis_clf.app`): served on 127.0.0.1 in a subprocess, called through `gradio_client`, exported as a Space"
import os, socket, struct, subprocess, sys, time, urllib.request, zlib
from pathlib import Path

import pytest

gr = pytest.importorskip('gradio', reason='gradio not installed (the `app` extra)')
gradio_client = pytest.importorskip('gradio_client', reason='gradio_client not installed (the `app` extra)')

from breakhis_clf.data import UserError, make_synthetic_breakhis
from breakhis_clf.inference import load_model, predict
from breakhis_clf.app import classify, export_space, example_images

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A tiny pretrained run folder (two frozen epochs, 64 px, synthetic data)"
    from breakhis_clf.cli import train_run
    tmp = tmp_path_factory.mktemp('app')
    root = make_synthetic_breakhis(tmp/'data', n_patients=8, images_per_patient=2, magnifications=(40,), size=(175, 115),
                                   seed=0, progress=False)
    return train_run(root, arch='efficientnet_lite0', size=64, bs=8, freeze_epochs=1, epochs=0, out=tmp/'runs',
                     num_workers=0, log=lambda *a: None)

@pytest.fixture(scope='module')
def image(tmp_path_factory):
    return example_images(tmp_path_factory.mktemp('examples'), n=1, sample=tmp_path_factory.mktemp('none'))[0]

def _free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

@pytest.fixture(scope='module')
def server(run, image):
    "The app served on a free port of 127.0.0.1 by a subprocess: its URL"
    port = _free_port()
    code = (f"from breakhis_clf.app import launch_app; launch_app({str(run)!r}, port={port}, "
            f"examples=[{str(image)!r}])")
    env = {**os.environ, 'PYTHONPATH': str(REPO), 'GRADIO_ANALYTICS_ENABLED': 'False', 'NO_PROXY': '127.0.0.1,localhost'}
    p = subprocess.Popen([sys.executable, '-c', code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f'http://127.0.0.1:{port}/'
    for _ in range(240):
        if p.poll() is not None: pytest.fail(f"app exited with {p.returncode}:\n{p.stdout.read()}")
        try: urllib.request.urlopen(url, timeout=1); break
        except OSError: time.sleep(0.5)
    else: p.kill(); pytest.fail('app did not start within 120 s')
    yield url
    p.terminate()
    try: p.wait(10)
    except subprocess.TimeoutExpired: p.kill()

@pytest.fixture(scope='module')
def client(server): return gradio_client.Client(server, verbose=False)

def _expected(run, image):
    row = predict(load_model(run, device='cpu'), [image], progress=False).iloc[0]
    return row

def test_classify_matches_predict(run, image):
    m = load_model(run, device='cpu')
    probs, row = classify(m, image), _expected(run, image)
    assert set(probs) == set(m.classes)
    for c in m.classes: assert abs(probs[c] - row[f'p_{c}']) < 1e-5

def test_api_predict_matches_predict(run, image, client):
    res, row = client.predict(gradio_client.handle_file(image), api_name='/predict'), _expected(run, image)
    assert res['label'] == row.predicted
    conf = {c['label']: c['confidence'] for c in res['confidences']}
    for c in load_model(run, device='cpu').classes: assert abs(conf[c] - row[f'p_{c}']) < 1e-5

def _huge_png(path, side=100_000):
    "A PNG header announcing a `side`x`side` image (no pixel data): Pillow refuses it as a decompression bomb"
    ihdr = struct.pack('>IIBBBBB', side, side, 8, 2, 0, 0, 0)
    chunk = struct.pack('>I', len(ihdr)) + b'IHDR' + ihdr + struct.pack('>I', zlib.crc32(b'IHDR' + ihdr))
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk)

@pytest.mark.parametrize('kind', ['text', 'truncated', 'huge'])
def test_bad_upload_gives_message_and_server_keeps_serving(run, image, client, tmp_path, kind):
    bad = tmp_path/'bad.png'
    if kind == 'text': bad.write_text('not an image')
    elif kind == 'truncated': bad.write_bytes(Path(image).read_bytes()[:200])
    else: _huge_png(bad)
    with pytest.raises(Exception, match='Cannot use this file'):
        client.predict(gradio_client.handle_file(str(bad)), api_name='/predict')
    res = client.predict(gradio_client.handle_file(image), api_name='/predict')
    assert res['label'] == _expected(run, image).predicted

def test_export_space(run, tmp_path):
    dest = export_space(run, tmp_path/'space')
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob('*') if p.is_file()) == \
        ['README.md', 'app.py', 'model/model.json', 'model/model.safetensors', 'requirements.txt']
    readme = (dest/'README.md').read_text()
    assert readme.startswith('---\n') and 'sdk: gradio' in readme and 'app_file: app.py' in readme and 'license:' in readme
    assert 'not a diagnostic device' in readme
    assert 'breakhis-clf[app]' in (dest/'requirements.txt').read_text()
    compile((dest/'app.py').read_text(), 'app.py', 'exec')
    assert load_model(dest/'model', device='cpu').classes == load_model(run, device='cpu').classes

def test_export_space_refuses_non_empty_dest(run, tmp_path):
    (tmp_path/'space').mkdir(); (tmp_path/'space'/'keep.txt').write_text('mine')
    with pytest.raises(UserError, match='refusing to overwrite'): export_space(run, tmp_path/'space')
    assert (tmp_path/'space'/'keep.txt').read_text() == 'mine'
    assert sorted(p.name for p in (tmp_path/'space').iterdir()) == ['keep.txt']

# ---- in a browser: headless Chromium, skipped (saying why) when Chromium, its driver or selenium is missing ----

@pytest.fixture(scope='module')
def browser(tmp_path_factory):
    from test_docs import headless_chrome
    driver = headless_chrome(tmp_path_factory.mktemp('chrome-profile'))
    try: yield driver
    finally: driver.quit()

def _upload_and_classify(driver, url, path):
    "Open the app, upload `path`, click Classify"
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    driver.get(url)
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, '#upload input[type=file]'))
    driver.find_element(By.CSS_SELECTOR, '#upload input[type=file]').send_keys(str(path))
    time.sleep(1)  # the upload reaches the server before the click
    WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, 'classify').is_enabled())
    driver.find_element(By.ID, 'classify').click()

def _text(driver, css):
    return driver.execute_script(f"return (document.querySelector({css!r}) || {{}}).innerText || ''")

def test_browser_upload_shows_label(run, image, server, browser):
    from selenium.webdriver.support.ui import WebDriverWait
    _upload_and_classify(browser, server, image)
    want = _expected(run, image).predicted
    WebDriverWait(browser, 60).until(lambda d: want in _text(d, '#probs'), message=f"no {want!r} in the label")
    assert 'not a diagnostic device' in _text(browser, 'body')
    WebDriverWait(browser, 60).until(lambda d: d.execute_script(
        "const i = document.querySelector('#gradcam img'); return i !== null && i.complete && i.naturalWidth > 0"),
        message='no Grad-CAM image beside the label')

def test_browser_example_click_classifies(run, image, server, browser):
    "Clicking the example (the image the server was started with) then Classify shows its predicted label"
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    browser.get(server)
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, '.gallery-item'))
    browser.find_elements(By.CSS_SELECTOR, '.gallery-item')[0].click()
    time.sleep(1)
    browser.find_element(By.ID, 'classify').click()
    want = _expected(run, image).predicted
    WebDriverWait(browser, 60).until(lambda d: want in _text(d, '#probs'), message=f"no {want!r} in the label")

def test_browser_bad_upload_shows_message(server, browser, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait
    bad = tmp_path/'notes.png'; bad.write_text('not an image')
    _upload_and_classify(browser, server, bad)
    WebDriverWait(browser, 60).until(lambda d: 'Cannot use this file' in _text(d, 'body'),
                                     message='no error message in the page')

# ---- the command line (active once the CLI notebook adds the `app` and `export-space` subcommands) ----

def _has_command(name):
    from breakhis_clf.cli import build_parser
    return any(name in (getattr(a, 'choices', None) or {}) for a in build_parser()._actions)

@pytest.mark.skipif(not _has_command('export-space'), reason='breakhis-clf has no export-space subcommand yet')
def test_cli_export_space(run, tmp_path, capsys):
    from breakhis_clf.cli import main
    assert main(['export-space', str(run), str(tmp_path/'space')]) == 0
    assert (tmp_path/'space'/'model'/'model.safetensors').exists() and not (tmp_path/'space'/'model'/'model.pkl').exists()
    assert main(['export-space', str(run), str(tmp_path/'space')]) == 2
    assert 'refusing to overwrite' in capsys.readouterr().err

@pytest.mark.skipif(not _has_command('app'), reason='breakhis-clf has no app subcommand yet')
def test_cli_app_serves_predict(run, image):
    port = _free_port()
    env = {**os.environ, 'PYTHONPATH': str(REPO), 'NO_PROXY': '127.0.0.1,localhost'}
    p = subprocess.Popen([sys.executable, '-m', 'breakhis_clf.cli', 'app', '--model', str(run), '--port', str(port)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f'http://127.0.0.1:{port}/'
        for _ in range(240):
            if p.poll() is not None: pytest.fail(f"app exited with {p.returncode}:\n{p.stdout.read()}")
            try: urllib.request.urlopen(url, timeout=1); break
            except OSError: time.sleep(0.5)
        res = gradio_client.Client(url, verbose=False).predict(gradio_client.handle_file(image), api_name='/predict')
        assert res['label'] == _expected(run, image).predicted
    finally:
        p.terminate()
        try: p.wait(10)
        except subprocess.TimeoutExpired: p.kill()
