"`breakhis-clf train --nproc 2` on the CPU: two gloo processes write one complete run, evaluated on every image once"
import json, os, subprocess, sys
from pathlib import Path
import pandas as pd, pytest, torch, torch.distributed as dist
from breakhis_clf.data import make_synthetic_breakhis
from breakhis_clf.train import _broadcast_any, distrib_kwargs

def test_broadcast_on_cpu(tmp_path):
    "The override broadcasts CPU tensors under gloo (fastai 2.8.12's `.cuda()` fails without a GPU)"
    dist.init_process_group('gloo', init_method=f'file://{tmp_path/"pg"}', rank=0, world_size=1)
    try: assert _broadcast_any(None, [3, 1, 2], 0) == [3, 1, 2]
    finally: dist.destroy_process_group()
    assert distrib_kwargs() == dict(sync_bn=False, cpu=not torch.cuda.is_available())

# `breakhis-clf train --nproc 2`, and what it runs: `accelerate launch ... -m breakhis_clf.cli train`
LAUNCHERS = dict(nproc=['-m', 'breakhis_clf.cli', 'train', '--nproc', '2'],
                 accelerate=['-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1',
                             '--mixed_precision', 'no', '--dynamo_backend', 'no', '-m', 'breakhis_clf.cli', 'train'])

@pytest.mark.parametrize('how', list(LAUNCHERS))
def test_two_processes_one_run(tmp_path, how):
    data = make_synthetic_breakhis(tmp_path/'data', n_patients=8, images_per_patient=2, magnifications=[40], size=(160, 120), progress=False)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get('PYTHONPATH', '')]), OMP_NUM_THREADS='1')
    cmd = [sys.executable, *LAUNCHERS[how], '--data', str(data), '--arch', 'efficientnet_lite0',
           '--size', '64', '--bs', '4', '--freeze-epochs', '1', '--epochs', '1', '--num-workers', '0', '--out', str(tmp_path/'runs')]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[:4000]
    runs = list((tmp_path/'runs').iterdir())
    assert len(runs) == 1, runs  # one run folder, not one per process
    run = runs[0]
    assert r.stdout.count('Done:') == 1 and 'effective batch size 8' in r.stdout
    assert json.loads((run/'state.json').read_text())['state'] == 'complete'
    cfg = json.loads((run/'config.json').read_text())
    assert cfg['nproc'] == 2 and cfg['bs'] == 4 and cfg['effective_bs'] == 8
    split = pd.read_csv(run/'split.csv')
    m = json.loads((run/'metrics.json').read_text())
    assert m['n_images'] == (split.subset == 'valid').sum()  # the whole validation set, not one process's shard
    hist = pd.read_csv(run/'history.csv')
    assert list(hist.phase) == ['frozen', 'unfrozen']  # one line per epoch: one process logged
    sub = 'test' if (split.subset == 'test').any() else 'valid'
    rep = json.loads(next((run/'evaluation').glob('*.json')).read_text())
    assert rep['n_images'] == (split.subset == sub).sum()
    assert (run/'best.pth').exists() or (run/'models'/'best.pth').exists()

def test_nproc_mistakes_refused_before_launch(tmp_path, capsys):
    "A bad --nproc, data folder or setting ends with one error line before any process is started"
    from breakhis_clf.cli import main
    for argv in [['train', '--nproc', '0'], ['train', '--nproc', '2', '--data', str(tmp_path/'nothing')],
                 ['train', '--nproc', '2', '--bs', '0'], ['train', '--nproc', '2', '--resume', str(tmp_path)]]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith('breakhis-clf: error:'), (argv, err)
    assert not (tmp_path/'runs').exists()
