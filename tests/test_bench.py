"Smoke test of `bench/throughput.py`: a tiny run checks the output format and the results files, never the speed."
import json, os, re, subprocess, sys
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO/'bench'/'throughput.py'
TINY = ['--quick', '--steps', '1', '--repeats', '2', '--warmup', '1', '--patients', '4', '--images-per-patient', '1',
        '--image-size', '70x46', '--size', '32', '--bs', '4', '--inference-images', '4', '--threads', '1', '--num-workers', '0']

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
    printed = float(r.stdout.strip().split()[-1])
    assert printed == pytest.approx(tr['fastai Learner (defaults)']['ratio'], abs=0.006)
    loaders = res['data']['loaders']
    raw = loaders['raw 70x46 synthetic PNGs']
    assert raw['median'] > 0 and raw['cpu_time']['median'] > 0 and raw['images'] >= 16
    assert 'skipped' in loaders['real BreakHis sample (../shared, 23 PNGs)']  # BREAKHIS_SAMPLE points nowhere
    inf = res['inference']
    assert inf['images'] == 4 and inf['images_per_s'] > 0 and inf['rss_peak_mib'] >= inf['rss_base_mib'] > 0
    md = mds[0].read_text()
    assert res['hardware']['cpu'] in md and res['hardware']['torch'] in md
    assert 'GPU rows: not yet measured' in md  # this test runs on CPU: the GPU rows must say so

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
