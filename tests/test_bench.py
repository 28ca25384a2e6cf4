"Tests of `bench/throughput.py`: a tiny run checks the output format and the results files, never the speed; fakes check the pairing."
import json, os, re, subprocess, sys
from functools import partial
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO/'bench'/'throughput.py'
TINY = ['--quick', '--steps', '1', '--repeats', '2', '--warmup', '1', '--patients', '4', '--images-per-patient', '1',
        '--image-size', '70x46', '--size', '32', '--bs', '4', '--inference-images', '4', '--threads', '1', '--num-workers', '0',
        '--pairs', '4']

def run_bench(out, *args, env=None):
    "Run the benchmark script with `args`, results into `out`; return the completed process"
    env = {**os.environ, 'BREAKHIS_SAMPLE': str(out/'no-sample'), 'OMP_NUM_THREADS': '1', **(env or {})}
    return subprocess.run([sys.executable, str(SCRIPT), *args, '--out', str(out)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "One tiny benchmark run: (process, results folder)"
    out = tmp_path_factory.mktemp('bench')
    r = run_bench(out, *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    return r, out

def test_last_line_is_the_ratio(tiny):
    r, _ = tiny
    last = r.stdout.rstrip('\n').split('\n')[-1]
    m = re.fullmatch(r'fastai/torch train ratio: (\d+\.\d\d)', last)
    assert m, f"last line is {last!r}"
    assert float(m.group(1)) > 0

def test_results_files(tiny):
    r, out = tiny
    js, mds = sorted(out.glob('quick-cpu-*.json')), sorted(out.glob('quick-cpu-*.md'))
    assert len(js) == 1 and len(mds) == 1 and js[0].stem == mds[0].stem
    res = json.loads(js[0].read_text())
    tr = res['train']['results']
    assert set(tr) >= {'PyTorch loop', 'fastai Learner (defaults)', 'fastai, no progress bar', 'fastai, fastai Adam'}
    assert tr['PyTorch loop']['ratio'] == 1 and len(tr['PyTorch loop']['runs']) == 2
    pr = res['train']['paired']
    assert pr['pairs'] == len(pr['fastai_s']) == len(pr['torch_s']) == 4 and pr['warmup'] == 2 and pr['order'] == 'ABBA'
    assert pr['q1'] <= pr['ratio'] <= pr['q3']
    printed = float(r.stdout.strip().split()[-1])
    assert printed == pytest.approx(pr['ratio'], abs=0.006)  # the last line is the median of the paired ratios
    loaders = res['data']['loaders']
    raw = loaders['raw 70x46 synthetic PNGs']
    assert raw['median'] > 0 and raw['cpu_time']['median'] > 0 and raw['images'] >= 16
    assert 'skipped' in loaders['real BreakHis sample (../shared, 23 PNGs)']  # BREAKHIS_SAMPLE points nowhere
    inf = res['inference']
    assert inf['images'] == 4 and inf['images_per_s'] > 0 and inf['rss_peak_mib'] >= inf['rss_base_mib'] > 0
    md = mds[0].read_text()
    assert res['hardware']['cpu'] in md and res['hardware']['torch'] in md
    assert 'GPU rows: not yet measured' in md  # this test runs on CPU: the GPU rows must say so
    assert f"**{pr['ratio']:.3f}**" in md and 'median of 4 paired steps' in md

@pytest.fixture(scope='module')
def throughput():
    "The benchmark script imported as a module"
    sys.path.insert(0, str(SCRIPT.parent))
    try: import throughput
    finally: sys.path.remove(str(SCRIPT.parent))
    return throughput

def test_never_overwrites(tiny, throughput, tmp_path):
    "Writing the same results twice (same second) gives a second pair of files; the first is untouched"
    _, out = tiny
    res = json.loads(next(out.glob('*.json')).read_text())
    first = throughput.write_results(res, tmp_path)
    text = first.read_text()
    second = throughput.write_results(res, tmp_path)
    assert second != first and first.read_text() == text
    assert len(list(tmp_path.glob('*.json'))) == len(list(tmp_path.glob('*.md'))) == 2

def test_bad_options(throughput, capsys):
    for args,msg in [(['--skip', 'trian'], 'unknown section'), (['--image-size', '700'], 'expected WxH'),
                     (['--amp', '--device', 'cpu'], 'only benchmarked on CUDA')]:
        with pytest.raises(SystemExit) as e: throughput.get_args(args)
        assert e.value.code == 2 and msg in capsys.readouterr().err

def test_default_results_go_where_git_does_not_look(throughput):
    "A plain `python bench/throughput.py` must not change the source tree: its default folder is ignored by git"
    out = Path(throughput.get_args([]).out)
    assert out == REPO/'runs'/'bench'
    probe = out/'quick-cpu-20990101-000000.md'
    r = subprocess.run(['git', 'check-ignore', '-q', str(probe)], cwd=REPO)
    if r.returncode == 128: pytest.skip('not a git checkout')
    assert r.returncode == 0, f'{probe} would be tracked by git'

# The paired measurement: its logic, with made-up times and fake training steps (nothing here is timed)

def test_median_of_paired_ratios(throughput):
    "Each pair is divided first, then the median taken: a burst that slowed one pair, or both steps of two pairs, is ignored"
    fastai = [1.0, 1.05, 4.2, 8.0, 1.1]  # pair 3: a burst during both steps; pair 4: during fastai's step only
    torch_ = [1.0, 1.00, 4.0, 1.0, 1.0]
    r = throughput.paired_ratios(fastai, torch_)
    assert r['ratio'] == pytest.approx(1.05)  # ratios 1.0, 1.05, 1.05, 8.0, 1.1
    assert (r['q1'], r['q3'], r['pairs']) == (pytest.approx(1.05), pytest.approx(1.1), 5)
    assert r['iqr'] == pytest.approx(0.05)
    assert r['ratio_of_medians'] == pytest.approx(1.1)  # what medians of unpaired times say: not the same thing
    assert sum(a/b for a,b in zip(fastai, torch_))/5 == pytest.approx(2.44)  # and the mean ratio: far off
    for a,b in [([1.0, 2.0], [1.0]), ([], [])]:
        with pytest.raises(ValueError, match='equally long'): throughput.paired_ratios(a, b)

def _fake_pair(log, now, fastai_s=3.0, torch_s=1.0):
    "A fake fastai loop (it consumes an iterable) and a fake torch step, logging their calls and advancing a fake clock"
    def loop(batches):
        for b in batches: log.append(('fastai', b)); now[0] += fastai_s
    def step(b): log.append(('torch', b)); now[0] += torch_s
    return loop, step

def test_pairs_alternate_abba_on_the_same_batch(throughput):
    log, now = [], [0.0]
    loop, step = _fake_pair(log, now)
    fa, pt = throughput.run_pairs(loop, step, ['b0', 'b1', 'b2', 'b3'], 'cpu', clock=lambda: now[0])
    assert log == [('torch', 'b0'), ('fastai', 'b0'), ('fastai', 'b1'), ('torch', 'b1'),
                   ('torch', 'b2'), ('fastai', 'b2'), ('fastai', 'b3'), ('torch', 'b3')]
    assert fa == [3.0]*4 and pt == [1.0]*4  # each clock brackets its own step only

def test_a_loop_that_stops_early_is_an_error(throughput):
    def loop(batches):
        for i,b in enumerate(batches):
            if i == 2: break
    with pytest.raises(RuntimeError, match='2 of 4 batches'): throughput.run_pairs(loop, lambda b: None, range(4), 'cpu')

@pytest.mark.filterwarnings('ignore:Your generator is empty')  # fastprogress, on the empty validation set
def test_fastai_fit_trains_one_batch_between_torch_steps(throughput):
    "The real fastai loop takes the batches one at a time, so each fastai step sits next to its torch step"
    import torch
    from torch import nn
    from fastai.learner import Learner
    from fastai.callback.core import Callback
    from fastai.losses import CrossEntropyLossFlat
    log = []
    class StepOrder(Callback):
        def after_batch(self): log.append(('fastai', int(self.learn.y[0])))
    learn = Learner(throughput.bench_dls([], 'cpu'), nn.Linear(3, 2), loss_func=CrossEntropyLossFlat(), cbs=StepOrder())
    batches = [(torch.randn(2, 3), torch.tensor([i % 2, 0])) for i in range(4)]
    fa, pt = throughput.run_pairs(partial(throughput.fastai_fit, learn), lambda b: log.append(('torch', int(b[1][0]))), batches, 'cpu')
    assert log == [('torch', 0), ('fastai', 0), ('fastai', 1), ('torch', 1), ('torch', 0), ('fastai', 0), ('fastai', 1), ('torch', 1)]
    assert len(fa) == len(pt) == 4 and min(fa + pt) >= 0
    assert learn.train_iter == 4  # four genuine fastai training steps, through `Learner.fit`
