"The `breakhis-clf` command line: end-to-end runs and one clear line for every user mistake."
import json, os, subprocess, sys, time
from pathlib import Path
import pandas as pd, pytest
from breakhis_clf.data import leaked_patients

EXE = Path(sys.executable).parent/'breakhis-clf'
FAST = ['--arch', 'resnet18', '--size', '64', '--bs', '16', '--epochs', '1', '--freeze-epochs', '0', '--num-workers', '0']
RUN_FILES = ['model.pkl', 'model.safetensors', 'model.json', 'history.csv', 'split.csv', 'metrics.json', 'loss.png',
             'config.json', 'evaluation']


def cli(*args, cwd=None, env=None, timeout=600):
    "Run `breakhis-clf args...`; return the completed process"
    e = {**os.environ, 'OMP_NUM_THREADS': '2', **(env or {})}
    return subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=e, timeout=timeout)


def one_line_error(p, *needles):
    "Assert `p` failed with exit 2 and a single `breakhis-clf: error:` line containing `needles`, no traceback"
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    lines = [l for l in p.stderr.splitlines() if l.startswith('breakhis-clf: error:')]
    assert len(lines) == 1, p.stderr
    assert 'Traceback' not in p.stderr, p.stderr
    for n in needles: assert n in lines[0], (n, lines[0])


def test_train_end_to_end_writes_every_file(tmp_path, synth_root):
    p = cli('train', '--data', synth_root, *FAST, '--no-pretrained', '--out', tmp_path/'runs')
    assert p.returncode == 0, p.stderr[-3000:]
    runs = list((tmp_path/'runs').iterdir())
    assert len(runs) == 1
    run = runs[0]
    for f in RUN_FILES: assert (run/f).exists(), f
    sp = pd.read_csv(run/'split.csv')
    assert list(sp.columns[:4]) == ['path', 'patient_id', 'case_id', 'label'] and {'is_valid', 'subset'} <= set(sp.columns)
    assert leaked_patients(sp) == [] and set(sp.subset) == {'train', 'valid', 'test'}  # --test-pct 0.2 by default
    assert (sp.is_valid == (sp.subset == 'valid')).all()
    m = json.loads((run/'metrics.json').read_text())['image_level']
    assert 0 <= m['accuracy'] <= 1 and m['valid_loss'] > 0
    assert len(pd.read_csv(run/'history.csv')) == 1
    cfg = json.loads((run/'config.json').read_text())
    assert cfg['arch'] == 'resnet18' and cfg['pretrained'] is False and cfg['synthetic'] is True
    assert (run/'evaluation'/'summary.md').exists()
    assert 'Evaluation on the test patients' in p.stdout and 'patient accuracy' in p.stdout
    ev = json.loads((run/'evaluation'/'metrics.json').read_text())
    assert ev['subset'] == 'test' and ev['n_images'] == (sp.subset == 'test').sum()  # the report is on test, once
    assert ev['trained_on']['n_patients'] == sp[sp.subset == 'train'].patient_id.nunique()

    # `evaluate` on the run writes a second report next to the first, never over it
    pe = cli('evaluate', '--model', run)
    assert pe.returncode == 0, pe.stderr[-2000:]
    assert (run/'evaluation-2'/'metrics.json').exists() and 'patient accuracy' in pe.stdout

    # a second run never touches the first
    before = {f: f.stat().st_mtime_ns for f in run.rglob('*')}
    p2 = cli('train', '--data', synth_root, *FAST, '--no-pretrained', '--out', tmp_path/'runs')
    assert p2.returncode == 0, p2.stderr[-3000:]
    assert len(list((tmp_path/'runs').iterdir())) == 2
    assert before == {f: f.stat().st_mtime_ns for f in run.rglob('*')}

    # and the run can be used for prediction
    img = sp.path[0]
    p3 = cli('predict', '--model', run, img)
    assert p3.returncode == 0, p3.stderr[-2000:]
    assert Path(img).name in p3.stdout
    first = p3.stderr.splitlines()[0]  # predict says first what the model is and what it was trained on
    assert first.startswith(f'breakhis-clf: model {run}') and 'trained on SYNTHETIC' in first, p3.stderr


def test_one_epoch_on_real_sample(tmp_path, sample_root):
    p = cli('train', '--data', sample_root, *FAST, '--no-pretrained', '--out', tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    run = next(tmp_path.iterdir())
    for f in RUN_FILES: assert (run/f).exists(), f
    assert json.loads((run/'config.json').read_text())['synthetic'] is False
    assert len(pd.read_csv(run/'split.csv')) == 23


@pytest.fixture
def offline(tmp_path_factory):
    "Environment for a child process with no network (a `sitecustomize` makes every connection fail) and an empty weights cache"
    d = tmp_path_factory.mktemp('offline')
    (d/'sitecustomize.py').write_text("import socket\n"
        "def _refuse(*args, **kwargs): raise OSError('no network in this test')\n"
        "socket.create_connection = _refuse\n")
    return {'PYTHONPATH': os.pathsep.join(p for p in (str(d), os.environ.get('PYTHONPATH')) if p), 'TORCH_HOME': str(d/'torch')}


def test_offline_weights_error_is_quick_and_clear(tmp_path, sample_root, offline):
    t = time.time()
    p = cli('train', '--data', sample_root, '--arch', 'resnet50', '--out', tmp_path/'runs', env={**offline, 'TORCH_HOME': str(tmp_path/'th')})
    one_line_error(p, 'resnet50', 'resnet50-', str(tmp_path/'th'), '--no-pretrained', '--arch efficientnet_lite0')
    assert time.time() - t < 60
    assert not (tmp_path/'runs').exists() or not any((tmp_path/'runs').iterdir())  # no half-made run folder


def test_real_data_without_weights_offers_the_packaged_model(tmp_path, sample_root, offline):
    "Real BreakHis, no --arch, no ResNet-50 weights: one error line offering --arch efficientnet_lite0, never a silent fallback"
    p = cli('train', '--data', sample_root, '--out', tmp_path/'runs', env=offline)
    one_line_error(p, 'resnet50', '--arch efficientnet_lite0', '--no-pretrained', '--weights')
    assert 'efficientnet_lite0 instead' not in p.stdout  # the demo's fallback is for synthetic data only
    assert not (tmp_path/'runs').exists() or not any((tmp_path/'runs').iterdir())  # no half-made run folder


def test_train_without_arguments_offline_trains_the_pretrained_effnet(tmp_path, offline):
    "`breakhis-clf train` with no BreakHis and no ResNet weights fine-tunes the packaged efficientnet_lite0, saying so once"
    from breakhis_clf.data import make_synthetic_breakhis
    # a small synthetic set where the fallback writes its own (find_data reuses it), to keep the test fast
    make_synthetic_breakhis(tmp_path/'data'/'breakhis-synthetic-v2', n_patients=8, images_per_patient=4, magnifications=(40,),
                            size=(96, 64), progress=False)
    (tmp_path/'no-breakhis').mkdir()
    p = cli('train', '--size', '64', '--epochs', '1', '--freeze-epochs', '1', '--bs', '16', '--num-workers', '0',
            cwd=tmp_path, env={**offline, 'BREAKHIS_DIR': str(tmp_path/'no-breakhis')})
    assert p.returncode == 0, p.stderr[-3000:]
    notice = [l for l in p.stdout.splitlines() if 'using the pretrained efficientnet_lite0' in l]
    assert len(notice) == 1 and 'resnet50' in notice[0], p.stdout
    assert 'SYNTHETIC' in p.stdout and 'Synthetic demo settings: efficientnet_lite0' in p.stdout
    run, = (tmp_path/'runs').iterdir()
    assert 'efficientnet_lite0' in run.name
    cfg = json.loads((run/'config.json').read_text())
    assert (cfg['arch'], cfg['pretrained'], cfg['synthetic']) == ('efficientnet_lite0', True, True)
    assert Path(cfg['weights']).name == 'efficientnet-lite0-57934424.pth' and Path(cfg['weights']).is_file()
    assert (cfg['size'], cfg['bs'], cfg['epochs'], cfg['freeze_epochs'], cfg['lr']) == (64, 16, 1, 1, 1e-2)  # lr: the demo's
    assert list(pd.read_csv(run/'history.csv').phase) == ['frozen', 'unfrozen']
    assert json.loads((run/'model.json').read_text())['arch'] == 'efficientnet_lite0'
    assert (run/'evaluation'/'summary.md').exists()
    assert not any(Path(offline['TORCH_HOME']).rglob('*.pth'))  # nothing was downloaded


def test_defaults_real_data_and_demo():
    from breakhis_clf.cli import run_defaults, build_parser
    assert run_defaults(False) == dict(size=224, bs=32, freeze_epochs=1, epochs=3, lr=2e-3)
    assert run_defaults(True) == dict(size=128, bs=16, freeze_epochs=2, epochs=2, lr=1e-2)
    a = build_parser().parse_args(['train'])
    assert (a.arch, a.size, a.bs, a.epochs, a.freeze_epochs, a.lr) == (None,)*6 and a.pretrained and a.evaluate


def test_pick_model_offline(tmp_path, monkeypatch):
    "Offline with no cached weights: the synthetic demo falls back in one line; real data stops with the offer"
    import breakhis_clf.learner as L
    from breakhis_clf.cli import pick_model
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    monkeypatch.setattr(L, 'can_reach', lambda *a, **k: False)
    msgs = []
    arch, w = pick_model(synthetic=True, log=msgs.append)
    assert arch == 'efficientnet_lite0' and w == L.packaged_weights() and len(msgs) == 1
    with pytest.raises(L.WeightsUnavailableError, match='--arch efficientnet_lite0'): pick_model(synthetic=False)
    with pytest.raises(L.WeightsUnavailableError): pick_model('resnet50', synthetic=True)  # a named arch is never replaced
    assert pick_model('efficientnet_lite0')[0] == 'efficientnet_lite0'
    assert pick_model('resnet18', pretrained=False) == ('resnet18', None)


def main_error(capsys, *args):
    "Run `main(args)` in this process (no interpreter start-up); assert one error line and exit 2; return the line"
    from breakhis_clf.cli import main
    rc = main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith('breakhis-clf: error:')]
    assert rc == 2 and len(lines) == 1 and 'Traceback' not in err, (rc, err)
    return lines[0]


@pytest.mark.parametrize('args,needles', [
    (['train', '--data', '/no/such/folder'], ['/no/such/folder', 'not found']),
    (['train', '--data', '{empty}'], ['no BreakHis images']),
    (['train', '--data', '{synth}', '--arch', 'resnet5000'], ['resnet5000', 'unknown architecture']),
    (['train', '--data', '{synth}', '--weights', '{empty}/w.pth'], ['w.pth']),
    (['train', '--data', '{synth}', '--weights', '{empty}/w.pth', '--no-pretrained'], ['contradict']),
    (['train', '--data', '{synth}', '--split', 'folds'], ['Folds.csv']),
    (['train', '--data', '{synth}', '--split', 'spanhol', '--fold', '9'], ['--fold 9']),
    (['evaluate', '--model', '/no/such/run'], ['/no/such/run']),
    (['predict', '--model', '/no/such/run', 'x.png'], ['/no/such/run']),
])
def test_bad_arguments_give_one_line(tmp_path, synth_root, capsys, args, needles):
    (tmp_path/'empty').mkdir()
    args = [a.format(empty=tmp_path/'empty', synth=synth_root) for a in args]
    line = main_error(capsys, *args, *(['--out', tmp_path/'runs'] if args[0] == 'train' else []))
    for n in needles: assert n in line, (n, line)
    assert not (tmp_path/'runs').exists() or not any((tmp_path/'runs').iterdir())  # no half-made run folder


def test_magnification_without_images(tmp_path, capsys):
    from breakhis_clf.data import make_synthetic_breakhis
    root = make_synthetic_breakhis(tmp_path, n_patients=4, images_per_patient=1, magnifications=[40], size=(70, 46), progress=False)
    assert '400X' in main_error(capsys, 'train', '--data', root, '--magnification', '400', '--out', tmp_path/'runs')


def test_entry_point_exit_status_and_usage(tmp_path):
    "The installed console script: argparse mistakes and user errors both exit 2, with no traceback"
    one_line_error(cli('train', '--magnification', '50'), '--magnification 50', '40, 100, 200, 400')
    one_line_error(cli('train', '--target', 'colour'), '--target colour', 'label', 'tumor_type')
    p = cli('train', '--epochs', 'many')
    assert p.returncode == 2 and 'invalid int value' in p.stderr  # argparse's own usage error
    one_line_error(cli('train', '--data', tmp_path/'missing'), 'missing', 'not found')


def test_synthetic_fallback_is_announced(tmp_path):
    "No --data and no BreakHis: a synthetic set is written under the working folder and the run says so"
    p = cli('train', *FAST, '--no-pretrained', '--no-evaluate', cwd=tmp_path, env={'BREAKHIS_DIR': str(tmp_path/'none')})
    assert p.returncode == 0, p.stderr[-3000:]
    assert 'SYNTHETIC' in p.stdout + p.stderr
    assert (tmp_path/'data'/'breakhis-synthetic-v2'/'BreaKHis_v1'/'SYNTHETIC.txt').exists()
    assert len(list((tmp_path/'runs').iterdir())) == 1


def test_help_answers_without_loading_torch():
    "`breakhis-clf --help` and each subcommand's help build the parser only: no torch, fastai or pandas import"
    code = ("import sys\nfrom breakhis_clf.cli import main\n"
            "for argv in ([], ['train'], ['evaluate'], ['predict']):\n"
            "    try: main([*argv, '--help'])\n"
            "    except SystemExit as e: assert e.code == 0, e.code\n"
            "heavy = sorted(m for m in ('torch', 'fastai', 'pandas', 'matplotlib') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert '--test-pct' in r.stdout and '--magnification' in r.stdout


@pytest.mark.parametrize('args, needles', [
    (['--epochs', '0', '--freeze-epochs', '0'], ['nothing to train']),
    (['--no-pretrained', '--epochs', '0'], ['nothing to train']),
    (['--size', '0'], ['--size 0', 'at least 1']),
    (['--bs', '-4'], ['--bs -4', 'at least 1']),
    (['--epochs', '-1'], ['--epochs -1', '0 or more']),
    (['--lr', '0'], ['--lr 0.0', 'positive']),
    (['--valid-pct', '1.5'], ['--valid-pct 1.5']),
    (['--test-pct', '0.9'], ['--test-pct 0.9']),
])
def test_bad_settings_fail_before_any_folder_is_made(tmp_path, synth_root, args, needles):
    "A setting no run can use gives one line, and leaves no (orphan) run folder behind"
    one_line_error(cli('train', '--data', synth_root, '--arch', 'resnet18', '--out', tmp_path/'runs', *args), *needles)
    assert not (tmp_path/'runs').exists()


def test_bad_weights_file_and_bad_out_fail_before_any_folder_is_made(tmp_path, synth_root):
    (tmp_path/'junk.pth').write_bytes(b'not a checkpoint')
    one_line_error(cli('train', '--data', synth_root, '--arch', 'resnet18', '--weights', tmp_path/'junk.pth',
                       '--out', tmp_path/'runs'), 'junk.pth')
    assert not (tmp_path/'runs').exists()
    (tmp_path/'a-file').write_text('mine')
    one_line_error(cli('train', '--data', synth_root, *FAST, '--no-pretrained', '--out', tmp_path/'a-file'), 'a-file', 'not a folder')
    assert (tmp_path/'a-file').read_text() == 'mine'


def test_read_only_out_is_one_line(tmp_path, synth_root):
    ro = tmp_path/'read-only'; ro.mkdir(); ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK): pytest.skip('running as a user who can write anywhere (root)')
        one_line_error(cli('train', '--data', synth_root, *FAST, '--no-pretrained', '--out', ro), 'read-only', 'cannot make a run folder')
    finally: ro.chmod(0o755)


def test_diverging_run_stops_with_one_line(tmp_path, synth_root):
    "A learning rate that makes the loss non-finite ends the run at once, with one line saying what to do"
    p = cli('train', '--data', synth_root, *FAST, '--no-pretrained', '--lr', '1e6', '--epochs', '3', '--out', tmp_path/'runs')
    one_line_error(p, 'training diverged at epoch', '(loss nan', 'lower --lr')
    run, = (tmp_path/'runs').iterdir()
    assert not (run/'model.json').exists()  # nothing that could be taken for a trained model
    assert json.loads((run/'state.json').read_text())['state'] == 'failed'
