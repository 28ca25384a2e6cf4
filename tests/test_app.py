"The Gradio app (`breakhis_clf.app`): served on 127.0.0.1 in a subprocess, called through `gradio_client`, exported as a Space"
import os, socket, subprocess, sys, time, urllib.request
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

@pytest.mark.parametrize('kind', ['text', 'truncated'])
def test_bad_upload_gives_message_and_server_keeps_serving(run, image, client, tmp_path, kind):
    bad = tmp_path/'bad.png'
    if kind == 'text': bad.write_text('not an image')
    else: bad.write_bytes(Path(image).read_bytes()[:200])
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
