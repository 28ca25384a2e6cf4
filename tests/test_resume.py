"Runs that survive interruption: Ctrl-C and SIGTERM keep the best model, `--resume` finishes the run, states are recorded."
import json, signal, subprocess, sys, time
from pathlib import Path
import pandas as pd, pytest
from test_cli import EXE, cli, one_line_error
from breakhis_clf.train import read_checkpoint

PRE = ['--arch', 'efficientnet_lite0', '--magnification', '40', '--size', '48', '--bs', '4', '--freeze-epochs', '1', '--epochs', '4', '--num-workers', '0']


def interrupt(args, out:Path, sig=signal.SIGINT, after_epochs=2, timeout=300):
    "Start `breakhis-clf train args`, send `sig` once `after_epochs` epochs are logged; return (process, run folder)"
    p = subprocess.Popen([str(EXE), 'train', *map(str, args), '--out', str(out)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**__import__('os').environ, 'OMP_NUM_THREADS': '2'})
    t0 = time.time()
    while time.time() - t0 < timeout:
        ck = list(out.glob('*/models/last.pth'))  # replaced whole after every epoch: safe to read while training
        if after_epochs == 0 and list(out.glob('*/config.json')) or ck and read_checkpoint(ck[0])['epochs_done'] >= after_epochs: break
        if p.poll() is not None: pytest.fail(f"training ended before the signal: {p.stderr[-2000:] if p.stderr else ''}")
        time.sleep(0.02)
    p.send_signal(sig)
    p.stdout_text, p.stderr_text = p.communicate(timeout=timeout)
    run, = out.iterdir()
    return p, run


def state(run): return json.loads((run/'state.json').read_text())


def test_ctrl_c_keeps_best_model_and_resume_finishes_the_same_run(tmp_path, synth_root):
    sig, status, args = signal.SIGINT, 130, ['--data', synth_root, *PRE]
    p, run = interrupt(args, tmp_path/'runs', sig)
    assert p.returncode == status, p.stderr_text[-3000:]
    assert 'Traceback' not in p.stderr_text, p.stderr_text
    last = p.stderr_text.strip().splitlines()[-1]
    assert last.startswith('breakhis-clf: interrupted after ') and f'saved in {run}' in last and f'--resume {run}' in last, last
    st = state(run)
    assert st['state'] == 'interrupted' and st['signal'] == sig.name and 2 <= st['epochs_done'] < 5, st
    # the best epoch so far is saved in the loadable form, and it is the best of the log
    from breakhis_clf.inference import load_model
    h = pd.read_csv(run/'history.csv')
    assert st['best_epoch'] == h.valid_loss.idxmin() + 1 and f"(epoch {st['best_epoch']}," in last
    m = load_model(run, device='cpu')
    assert m.meta['trained_on']['synthetic'] is True
    assert (run/'models'/'last.pth').exists() and not list(run.rglob('.*partial*'))
    # `evaluate` works on it and says the run is not complete
    e = cli('evaluate', '--model', run)
    assert e.returncode == 0 and 'breakhis-clf: warning:' in e.stderr and 'this run is interrupted' in e.stderr, e.stderr[-2000:]
    assert f"**The training run is interrupted** after {st['epochs_done']} of 5 epochs" in (run/'evaluation'/'summary.md').read_text()

    r = cli('train', '--resume', run, '--num-workers', '0')
    assert r.returncode == 0, r.stderr[-3000:]
    assert f'Resuming {run}' in r.stdout and 'Evaluation on the test patients' in r.stdout
    st = state(run)
    assert st['state'] == 'complete' and st['epochs_done'] == 5, st
    h = pd.read_csv(run/'history.csv')
    assert list(h.epoch) == [0, 1, 2, 3, 4] and list(h.phase) == ['frozen'] + ['unfrozen']*4  # every epoch once
    assert (run/'model.json').exists() and (run/'loss.png').exists() and not (run/'models'/'last.pth').exists()
    # the resumed run is the run that was never interrupted: same validation losses
    full = cli('train', *args, '--no-evaluate', '--out', tmp_path/'full')
    assert full.returncode == 0, full.stderr[-3000:]
    hf = pd.read_csv(next((tmp_path/'full').iterdir())/'history.csv')
    pd.testing.assert_series_equal(h.valid_loss, hf.valid_loss, rtol=1e-4)


def test_sigterm_stops_like_ctrl_c(tmp_path, synth_root):
    p, run = interrupt(['--data', synth_root, *PRE], tmp_path/'runs', signal.SIGTERM)
    assert p.returncode == 143 and 'Traceback' not in p.stderr_text, p.stderr_text[-3000:]
    assert p.stderr_text.strip().splitlines()[-1].startswith('breakhis-clf: interrupted after ')
    st = state(run)
    assert st['state'] == 'interrupted' and st['signal'] == 'SIGTERM' and (run/'model.json').exists(), st
    assert not list(run.rglob('.*partial*'))


def test_interrupt_before_the_first_epoch_resumes_from_the_start(tmp_path, synth_root):
    p, run = interrupt(['--data', synth_root, *PRE], tmp_path/'runs', after_epochs=0)
    assert p.returncode == 130, p.stderr_text[-3000:]
    assert 'no epoch had finished' in p.stderr_text and 'Traceback' not in p.stderr_text, p.stderr_text
    assert state(run)['state'] == 'interrupted' and not (run/'model.json').exists()
    r = cli('train', '--resume', run, '--num-workers', '0', '--no-evaluate')
    assert r.returncode == 0, r.stderr[-3000:]
    assert state(run)['state'] == 'complete' and len(pd.read_csv(run/'history.csv')) == 5


def test_resume_refuses_what_it_cannot_resume(tmp_path, synth_root):
    one_line_error(cli('train', '--resume', tmp_path), 'not a run folder')
    p, run = interrupt(['--data', synth_root, *PRE], tmp_path/'runs')
    assert p.returncode == 130
    one_line_error(cli('train', '--resume', run, '--epochs', '9'), "--resume takes the run's own settings", '--epochs')
    assert state(run)['state'] == 'interrupted'  # nothing was touched
    # a run whose state says it is running in a live process is not resumed twice
    st = {**state(run), 'state': 'running', 'pid': subprocess.Popen(['sleep', '30']).pid, 'host': __import__('platform').node()}
    (run/'state.json').write_text(json.dumps(st))
    one_line_error(cli('train', '--resume', run), 'is being trained by process')
    st['state'] = 'complete'; (run/'state.json').write_text(json.dumps(st))
    one_line_error(cli('train', '--resume', run), 'the run is complete')


def test_unreadable_training_images_are_listed_and_skipped_before_training(tmp_path, synth_root):
    import shutil
    data = tmp_path/'data'; shutil.copytree(synth_root, data/'BreaKHis_v1')
    png = sorted(p for p in (data/'BreaKHis_v1').rglob('*.png') if p.parent.name == '40X')
    png[0].write_bytes(png[0].read_bytes()[:200])  # truncated, with a valid BreakHis name
    png[1].write_bytes(b'not an image at all')
    p = cli('train', '--data', data, *PRE[:-6], '--freeze-epochs', '1', '--epochs', '0', '--num-workers', '0', '--no-evaluate',
            '--out', tmp_path/'runs')
    assert p.returncode == 0, p.stderr[-3000:]
    assert f'Skipped {png[0]}' in p.stdout and f'Skipped {png[1]}' in p.stdout and '2 unreadable image(s) left out' in p.stdout
    run, = (tmp_path/'runs').iterdir()
    assert not {str(png[0]), str(png[1])} & set(pd.read_csv(run/'split.csv').path)
