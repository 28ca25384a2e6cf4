#!/usr/bin/env python
"""Throughput benchmarks for breakhis-clf: training steps (fastai `Learner` vs a plain PyTorch loop), the data
pipeline, the safe predictor and, on a GPU, a BreakHis-sized two-phase ResNet-50 run.

    python bench/throughput.py --quick   # under 3 minutes on 2 CPU cores: resnet18, 64 px, a few dozen images
    python bench/throughput.py           # full: resnet50, 224 px (on CUDA: mixed precision + channels_last,
                                         # plus `train` on a 7,909-image synthetic set)

Writes `runs/bench/<mode>-<device>-<time>.md` and `.json` (a new pair every run, never overwriting; `runs/` is not
tracked by git, and `--out bench/results` publishes a run) and prints,
as its last line, `fastai/torch train ratio: X.XX`: fastai's step time divided by plain PyTorch's, the median over
pairs of steps on the same batch run one right after the other (so it holds on a busy machine): 1.00 means no
overhead, 1.05 is the goal's limit. See bench/README.md for what is measured and why.
"""
from __future__ import annotations
import argparse, contextlib, copy, io, json, math, os, platform, resource, shlex, shutil, statistics
import subprocess, sys, tempfile, time, warnings
from functools import partial
from pathlib import Path

warnings.filterwarnings('ignore', category=FutureWarning)  # torch.jit deprecation, raised while fastai imports
warnings.filterwarnings('ignore', message='Your generator is empty')  # fastprogress, on the empty validation set
import pandas as pd, torch, torch.nn.functional as F
from torch import nn
import fastai
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.optimizer import Adam, OptimWrapper
from fastai.torch_core import TensorImage, TensorCategory
from fastai.callback.progress import ProgressCallback  # patches `Learner.no_bar`
from fastai.callback.fp16 import MixedPrecision
from fastai.callback.channelslast import ChannelsLast

import breakhis_clf
from breakhis_clf.data import make_synthetic_breakhis, breakhis_df, patient_split, parse_name, breakhis_relpath
from breakhis_clf.datablock import breakhis_dls, preresize
from breakhis_clf.learner import breakhis_learner

REPO = Path(__file__).resolve().parents[1]
SAMPLE = Path(os.environ.get('BREAKHIS_SAMPLE', REPO.parent/'shared'/'breakhis-sample'))
RATIO_LINE = 'fastai/torch train ratio: {:.2f}'
LR, HYPER = 1e-3, dict(betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01)  # = fastai `Adam`'s defaults, as torch AdamW
BREAKHIS_IMAGES = 7909

def say(*args):
    "Progress message on stdout (never after the final ratio line)"
    print(*args, flush=True)

# ---------------------------------------------------------------------------------------------------- setup
def get_args(argv=None) -> argparse.Namespace:
    "Command-line options; `--quick` and the device choose the defaults of the rest"
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true', help='resnet18 at 64 px on a few dozen images (< 3 min on 2 CPU cores)')
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'], help='auto: CUDA when there is a GPU')
    p.add_argument('--arch', help='torchvision architecture (default resnet50, quick: resnet18)')
    p.add_argument('--size', type=int, help='square crop side in pixels (default 224, quick: 64)')
    p.add_argument('--bs', type=int, help='batch size (default 32, on CUDA 64; quick: 16)')
    p.add_argument('--steps', type=int, help='training steps per timed repeat')
    p.add_argument('--repeats', type=int, help='timed repeats per contender (the median is reported)')
    p.add_argument('--pairs', type=int, help='paired steps (one fastai, one PyTorch, same batch) for the headline ratio '
                   '(rounded up to an even number; default 200, on a CPU: quick 120, full 30)')
    p.add_argument('--warmup', type=int, help='untimed warm-up steps per contender (and pairs before the timed ones)')
    p.add_argument('--amp', action=argparse.BooleanOptionalAction, default=None, help='fp16 mixed precision (default: on CUDA only)')
    p.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=None, help='channels_last memory format (default: on CUDA only)')
    p.add_argument('--threads', type=int, help="CPU threads for torch (default: torch's own choice; quick mode on a CPU: 1, because on a "
                   "shared machine a step with a second thread waits whenever that thread is descheduled)")
    p.add_argument('--patients', type=int, help='synthetic patients (default 16, quick: 8)')
    p.add_argument('--images-per-patient', type=int, help='synthetic images per patient and magnification')
    p.add_argument('--image-size', default='700x460', help='synthetic image size WxH (700x460 = BreakHis)')
    p.add_argument('--num-workers', type=int, help="data-loading processes (default: the package's default)")
    p.add_argument('--inference-images', type=int, help='images to classify in the inference benchmark')
    p.add_argument('--skip', default='', help='comma-separated sections to skip: train,data,inference,finetune')
    p.add_argument('--finetune', action=argparse.BooleanOptionalAction, default=None,
                   help='time a two-phase ResNet-50 `train` on a 7,909-image synthetic set (default: full mode on CUDA)')
    p.add_argument('--finetune-images', type=int, default=BREAKHIS_IMAGES, help='images in the fine-tuning set')
    p.add_argument('--out', default=str(REPO/'runs'/'bench'), help='folder for the .md and .json results (default: runs/bench, '
                   'which git ignores; the published results are in bench/results: pass --out bench/results to add one)')
    p.add_argument('--note', default='', help='a note for the results (e.g. "shared machine, other jobs running")')
    p.add_argument('--inference-child', nargs=2, metavar=('RUN_DIR', 'PATHS'), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.device == 'auto': a.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if a.device == 'cuda' and not torch.cuda.is_available(): p.error('--device cuda: no CUDA GPU is available')
    cuda, q = a.device == 'cuda', a.quick
    defaults = dict(arch='resnet18' if q else 'resnet50', size=64 if q else 224, bs=16 if q else (64 if cuda else 32),
                    steps=(20 if q else 30) if cuda else 6, repeats=3 if q and not cuda else 5,
                    pairs=(200 if cuda else 120) if q else (200 if cuda else 30), threads=1 if q and not cuda else None, warmup=5 if cuda else 2,
                    amp=cuda, channels_last=cuda, patients=8 if q else 16, images_per_patient=3 if q else (4 if not cuda else 8),
                    inference_images=32 if q else (512 if cuda else 64), finetune=cuda and not q)
    for k,v in defaults.items():
        if getattr(a, k) is None: setattr(a, k, v)
    if a.pairs < 1: p.error('--pairs: at least 1 pair is needed')
    if a.amp and not cuda: p.error('--amp: mixed precision is only benchmarked on CUDA')
    a.skip = {s for s in a.skip.split(',') if s}
    if bad := a.skip - {'train', 'data', 'inference', 'finetune'}: p.error(f"--skip {','.join(sorted(bad))}: unknown section")
    try: a.image_size = tuple(int(v) for v in a.image_size.lower().split('x'))
    except ValueError: a.image_size = ()
    if len(a.image_size) != 2 or min(a.image_size) < 1: p.error("--image-size: expected WxH, e.g. 700x460")
    a.mode = 'quick' if q else 'full'
    return a

def cpu_model() -> str:
    "The CPU's model name from /proc/cpuinfo (or `platform`)"
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError: pass
    return platform.processor() or platform.machine()

def hardware() -> dict:
    "What the numbers were measured on: CPU, cores, memory, GPU and library versions"
    mem = os.sysconf('SC_PAGE_SIZE')*os.sysconf('SC_PHYS_PAGES')/2**30
    gpu = (f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory/2**30:.0f} GiB), "
           f"CUDA {torch.version.cuda}") if torch.cuda.is_available() else None
    return dict(cpu=cpu_model(), logical_cores=os.cpu_count(), usable_cores=len(os.sched_getaffinity(0)),
                torch_threads=torch.get_num_threads(), memory_gib=round(mem, 1), gpu=gpu,
                python=platform.python_version(), torch=torch.__version__, fastai=fastai.__version__,
                breakhis_clf=breakhis_clf.__version__, platform=platform.platform())

def sync(device):
    "Wait for queued GPU work so a timer measures it"
    if torch.device(device).type == 'cuda': torch.cuda.synchronize()

def timed(fn, device, cpu:bool=False):
    "Wall-clock seconds `fn()` takes, GPU work included; with `cpu`, also this process's CPU seconds"
    sync(device); t, c = time.perf_counter(), time.process_time()
    fn()
    sync(device); wall, c = time.perf_counter() - t, time.process_time() - c
    return (wall, c) if cpu else wall

def summary(xs) -> dict:
    "Median, best and all values of a list of rates"
    return dict(median=statistics.median(xs), best=max(xs), runs=[round(x, 4) for x in xs])

# ---------------------------------------------------------------------------------------------------- data
def synthetic_set(dest, cfg) -> Path:
    "A small synthetic BreakHis at the configured image size (all four magnifications)"
    say(f"data: writing {cfg.patients*4*cfg.images_per_patient} synthetic {cfg.image_size[0]}x{cfg.image_size[1]} PNGs ...")
    return make_synthetic_breakhis(Path(dest)/'raw', n_patients=cfg.patients, images_per_patient=cfg.images_per_patient,
                                   size=cfg.image_size, progress=False)

def split_dls(root, cfg, bs=None, long_epochs:bool=False) -> DataLoaders:
    "The package's `DataLoaders` for the images under `root` (patient-wise split)"
    df = patient_split(breakhis_df(root))
    bs = min(bs or cfg.bs, int((~df.is_valid).sum()))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # fastai's "your generator is empty" and the like on tiny sets
        dls = breakhis_dls(df, size=cfg.size, bs=bs, num_workers=cfg.num_workers, device=cfg.device)
        if not long_epochs: return dls
        # Real epochs have ~170 batches, so starting the workers costs little; repeat the training rows until a
        # pass has at least 4 batches per worker (and 8 in all), so that start-up does not dominate tiny sets either
        k = math.ceil(max(8, 4*workers(dls))*bs/len(dls.train_ds))
        if k == 1: return dls
        df = pd.concat([df[~df.is_valid]]*k + [df[df.is_valid]], ignore_index=True)
        return breakhis_dls(df, size=cfg.size, bs=bs, num_workers=cfg.num_workers, device=cfg.device)

def workers(dls) -> int:
    "Data-loading processes of `dls.train` (fastai keeps the real count on its inner torch loader)"
    return dls.train.fake_l.num_workers

def children_cpu() -> float:
    "CPU seconds used by this process's finished child processes (e.g. data-loading workers after a pass)"
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime

def loader_rate(dls, min_images:int, device) -> dict:
    "Images/s of `dls.train` (decode, item and batch transforms) over full passes, and per CPU-second (workers included)"
    def one_pass():
        n = 0
        for xb,_ in dls.train: n += len(xb)
        return n
    for _ in dls.train: break  # warm-up: first-call code paths
    rates, cpu_rates, total = [], [], 0
    while total < min_images or len(rates) < 2:
        n, c0 = 0, children_cpu()
        def run():
            nonlocal n; n = one_pass()
        wall, cpu = timed(run, device, cpu=True)
        if n == 0: raise RuntimeError('the training DataLoader yields no batches: use more images or a smaller --bs')
        rates.append(n/wall); cpu_rates.append(n/(cpu + children_cpu() - c0)); total += n
    return dict(summary(rates), cpu_time=summary(cpu_rates), images=total, num_workers=workers(dls), bs=dls.train.bs)

# ---------------------------------------------------------------------------------------------------- training
def plain(t:torch.Tensor) -> torch.Tensor:
    "`t` as a plain `torch.Tensor` (fastai batches are `TensorImage`/`TensorCategory` subclasses)"
    return t.as_subclass(torch.Tensor)

def fixed_batches(dls, n_distinct:int, cfg) -> list:
    "`n_distinct` training batches from `dls`, collated once, as plain tensors on the device"
    out = []
    while len(out) < n_distinct:
        for xb,yb in dls.train:
            x = plain(xb).to(cfg.device)
            if cfg.channels_last: x = x.contiguous(memory_format=torch.channels_last)
            out.append((x, plain(yb).to(cfg.device)))
            if len(out) == n_distinct: break
    return out

def bench_dls(batches, device) -> DataLoaders:
    "fastai `DataLoaders` whose training set is exactly `batches` and whose validation set is empty"
    dls = DataLoaders(batches, [])
    dls._device = torch.device(device)
    return dls

def torch_step(model, opt, x, y, amp:bool, scaler):
    "One plain PyTorch training step: forward, cross-entropy, backward, step, zero_grad"
    with torch.autocast('cuda', dtype=torch.float16, enabled=amp):
        loss = F.cross_entropy(model(x).float(), y)
    if scaler is None:
        loss.backward(); opt.step()
    else:
        scaler.scale(loss).backward(); scaler.step(opt); scaler.update()
    opt.zero_grad()

def torch_loop(model, opt, batches, amp:bool, scaler):
    "The plain PyTorch training loop: `torch_step` on every batch, in train mode"
    model.train()
    for x,y in batches: torch_step(model, opt, x, y, amp, scaler)

def fastai_fit(learn, batches, bar:bool=True):
    "One `Learner.fit` epoch over `batches` (the progress bar and epoch table go to a buffer, not the terminal)"
    learn.dls = bench_dls(batches, learn.dls.device)
    with contextlib.redirect_stdout(io.StringIO()):
        if bar: learn.fit(1, lr=LR)
        else:
            with learn.no_bar(), learn.no_logging(): learn.fit(1, lr=LR)

def gpu_cbs(cfg) -> list:
    "fastai's mixed-precision and channels_last callbacks, as the package's `train` adds them on CUDA"
    return ([MixedPrecision()] if cfg.amp else []) + ([ChannelsLast()] if cfg.channels_last else [])

def plain_trainer(learn, cfg):
    "A copy of `learn.model` with torch's AdamW over the learner's parameter groups: (model, optimizer, grad scaler)"
    model = copy.deepcopy(learn.model).to(cfg.device)
    if cfg.channels_last: model = model.to(memory_format=torch.channels_last)
    groups = list(learn.splitter(model))
    if isinstance(groups[0], torch.Tensor): groups = [groups]  # a splitter giving one group as a flat list
    opt = torch.optim.AdamW([{'params': list(g)} for g in groups], lr=LR, **HYPER)
    return model, opt, (torch.amp.GradScaler('cuda') if cfg.amp else None)

def fastai_learner(learn, cfg) -> Learner:
    "A fastai `Learner` (default callbacks) on a copy of `learn.model`, with torch's AdamW through `OptimWrapper`"
    wrapped = partial(OptimWrapper, opt=torch.optim.AdamW, **HYPER)
    return Learner(bench_dls([], cfg.device), copy.deepcopy(learn.model).to(cfg.device), loss_func=learn.loss_func,
                   opt_func=wrapped, splitter=learn.splitter, lr=LR, cbs=gpu_cbs(cfg))

def contenders(learn, cfg) -> dict:
    "name -> function(batches) for each way of training, all on copies of `learn.model` with the same weights"
    dev = cfg.device
    model_t, opt_t, scaler = plain_trainer(learn, cfg)
    fa = fastai_learner(learn, cfg)
    fb = Learner(bench_dls([], dev), copy.deepcopy(learn.model).to(dev), loss_func=learn.loss_func, splitter=learn.splitter, lr=LR, cbs=gpu_cbs(cfg),
                 opt_func=partial(Adam, mom=HYPER['betas'][0], sqr_mom=HYPER['betas'][1], eps=HYPER['eps'], wd=HYPER['weight_decay']))
    typed = lambda bs: [(TensorImage(x), TensorCategory(y)) for x,y in bs]
    return {'PyTorch loop': lambda bs: torch_loop(model_t, opt_t, bs, cfg.amp, scaler),
            'fastai Learner (defaults)': lambda bs: fastai_fit(fa, bs),
            'fastai, no progress bar': lambda bs: fastai_fit(fa, bs, bar=False),
            'fastai, typed batches': lambda bs: fastai_fit(fa, typed(bs)),
            'fastai, fastai Adam': lambda bs: fastai_fit(fb, bs)}

def race(runs:dict, steps:list, warmup:int, repeats:int, cfg, verbose=False) -> dict:
    "Steps/s (wall and per CPU-second) of every contender after `warmup` steps; repeats interleaved, order rotated"
    for fn in runs.values(): fn(steps[:warmup])
    names = list(runs)
    rates, cpu_rates = {k: [] for k in names}, {k: [] for k in names}
    for r in range(repeats):
        for k in names[r % len(names):] + names[:r % len(names)]:
            wall, cpu = timed(partial(runs[k], steps), cfg.device, cpu=True)
            rates[k].append(len(steps)/wall); cpu_rates[k].append(len(steps)/cpu)
        if verbose: say(f"  repeat {r+1}/{repeats}, steps/s: " + ', '.join(f"{k} {v[-1]:.2f}" for k,v in rates.items()))
    res = {k: summary(v) for k,v in rates.items()}
    base, cbase = res['PyTorch loop']['median'], statistics.median(cpu_rates['PyTorch loop'])
    for k,v in res.items():
        v['ratio'] = v['median']/base
        v['paired_ratio'] = statistics.median(a/b for a,b in zip(rates[k], rates['PyTorch loop']))
        v['cpu_time'] = dict(summary(cpu_rates[k]), ratio=statistics.median(cpu_rates[k])/cbase)
    return res

LOOP_ONLY = ('PyTorch loop', 'fastai Learner (defaults)', 'fastai, no progress bar')  # differ only in the loop itself

def bench_overhead(cfg, main:dict, steps:int=100, repeats:int=7) -> dict:
    "fastai's fixed cost per step, measured on a tiny linear model whose own step costs almost nothing"
    say(f"train: fastai's fixed cost per step, {repeats}x{steps} steps of a linear model ...")
    torch.manual_seed(0)
    dev = cfg.device
    model = nn.Sequential(nn.Flatten(), nn.Linear(3*8*8, 2)).to(dev)
    learn = Learner(bench_dls([], dev), model, loss_func=CrossEntropyLossFlat())
    xs = [(torch.randn(cfg.bs, 3, 8, 8, device=dev), torch.randint(0, 2, (cfg.bs,), device=dev)) for _ in range(4)]
    runs = {k: v for k,v in contenders(learn, cfg).items() if k in LOOP_ONLY}
    res = race(runs, [xs[i % 4] for i in range(steps)], 5, repeats, cfg)
    key = 'cpu_time' if dev == 'cpu' else None  # on a CPU, CPU time is immune to other programs; on a GPU, wall time
    rate = lambda v: (v[key] if key else v)['median']
    t_main = 1/rate(main['PyTorch loop'])  # seconds per step of the benchmarked network, plain PyTorch
    out = {}
    for k,v in res.items():
        extra = 1/rate(v) - 1/rate(res['PyTorch loop'])
        out[k] = dict(extra_us=1e6*extra, tiny_step_us=1e6/rate(v), expected_ratio=t_main/(t_main + extra))
    return dict(per_step=out, measure='CPU time' if key else 'wall time', main_step_ms=1e3*t_main)

# Paired steps: the headline figure. Each batch is trained on once by fastai and once by plain PyTorch, one right
# after the other, so that a burst of load from other programs hits both steps of a pair alike; the median of the
# per-pair time ratios then ignores the pairs that a burst split, however slow they were.

def paired_ratios(a_times, b_times) -> dict:
    "Statistics of the per-pair ratios `a/b` of two equally long lists of step times (pair i = `a_times[i]`, `b_times[i]`)"
    if len(a_times) != len(b_times) or not a_times:
        raise ValueError(f"paired times need two equally long, non-empty lists (got {len(a_times)} and {len(b_times)})")
    rs = [a/b for a,b in zip(a_times, b_times)]
    q1, _, q3 = statistics.quantiles(rs, n=4, method='inclusive') if len(rs) > 1 else rs*3
    return dict(ratio=statistics.median(rs), q1=q1, q3=q3, iqr=q3 - q1, pairs=len(rs),
                ratio_of_medians=statistics.median(a_times)/statistics.median(b_times))

class PairedBatches:
    "Iterable of `batches` for fastai's fit loop that trains `other(b)` on each batch too, ABBA, timing both steps"
    def __init__(self, batches, other, device, clock=time.perf_counter):
        self.batches, self.other, self.device, self.clock = list(batches), other, device, clock
        self.times, self.other_times = [], []  # seconds per step: the loop's (fastai's) and `other`'s
    def __len__(self): return len(self.batches)
    def _clock(self):
        sync(self.device); return self.clock()
    def _other(self, b):
        t = self._clock(); self.other(b); self.other_times.append(self._clock() - t)
    def __iter__(self):
        for i,b in enumerate(self.batches):
            if i % 2 == 0: self._other(b)  # pairs alternate who goes first: B A, A B, B A, ...
            t = self._clock()
            yield b  # the loop that iterates (fastai's `all_batches`) trains on `b` before asking for the next batch
            self.times.append(self._clock() - t)
            if i % 2 == 1: self._other(b)

def run_pairs(loop, step, batches, device, clock=time.perf_counter):
    "Train `loop(iterable)` and `step(b)` on each of `batches`, interleaved ABBA: (loop's step times, `step`'s times)"
    pb = PairedBatches(batches, step, device, clock)
    loop(pb)
    if len(pb.times) != len(pb.batches): raise RuntimeError(f"the loop trained on {len(pb.times)} of {len(pb.batches)} batches")
    return pb.times, pb.other_times

def bench_pairs(learn, batches, cfg) -> dict:
    "fastai `Learner.fit` vs plain PyTorch, step by step on the same batches (ABBA): median of the paired time ratios"
    n, w = cfg.pairs + cfg.pairs % 2, max(2, cfg.warmup + cfg.warmup % 2)  # even counts: as many BA as AB pairs
    say(f"train: {w} warm-up + {n} paired steps, fastai Learner and plain PyTorch alternating on the same batches ...")
    model, opt, scaler = plain_trainer(learn, cfg)
    model.train()
    fa = fastai_learner(learn, cfg)
    fa_t, pt_t = run_pairs(partial(fastai_fit, fa), lambda b: torch_step(model, opt, *b, cfg.amp, scaler),
                           [batches[i % len(batches)] for i in range(w + n)], cfg.device)
    fa_t, pt_t = fa_t[w:], pt_t[w:]
    return dict(paired_ratios(fa_t, pt_t), warmup=w, fastai_ms=1e3*statistics.median(fa_t),
                torch_ms=1e3*statistics.median(pt_t), order='ABBA', fastai_s=[round(t, 5) for t in fa_t],
                torch_s=[round(t, 5) for t in pt_t])

def bench_train(dls, cfg) -> dict:
    "Steps/s of every contender on the same pre-collated batches; repeats interleaved, order rotated"
    torch.manual_seed(0)
    learn = breakhis_learner(dls, cfg.arch, pretrained=False, metrics=[])
    batches = fixed_batches(dls, min(cfg.steps, 4), cfg)
    steps = [batches[i % len(batches)] for i in range(cfg.steps)]
    paired = bench_pairs(learn, batches, cfg)
    say(f"  fastai/torch step time, median of {paired['pairs']} pairs: {paired['ratio']:.3f} "
        f"(quartiles {paired['q1']:.3f}-{paired['q3']:.3f})")
    runs = contenders(learn, cfg)
    say(f"train: {cfg.arch} {cfg.size}px bs {cfg.bs}, {cfg.warmup} warm-up + {cfg.repeats}x{cfg.steps} steps for "
        f"{len(runs)} contenders ...")
    res = race(runs, steps, cfg.warmup, cfg.repeats, cfg, verbose=True)
    for v in res.values(): v['images_per_s'] = v['median']*cfg.bs
    return dict(results=res, paired=paired, overhead=bench_overhead(cfg, res), device=cfg.device, threads=torch.get_num_threads(), arch=cfg.arch, size=cfg.size, bs=cfg.bs,
                steps=cfg.steps, repeats=cfg.repeats, warmup=cfg.warmup, amp=cfg.amp, channels_last=cfg.channels_last, lr=LR, optimizer=f"torch AdamW {HYPER}")

# ---------------------------------------------------------------------------------------------------- inference
def rss_mib(peak:bool=False) -> float:
    "This process's resident memory now, or its peak (`VmHWM`: unlike `ru_maxrss` it restarts at `exec`), in MiB"
    try:
        key = 'VmHWM:' if peak else 'VmRSS:'
        for line in Path('/proc/self/status').read_text().splitlines():
            if line.startswith(key): return int(line.split()[1])/1024
    except OSError: pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/(1024 if sys.platform != 'darwin' else 2**20)

def inference_child(run_dir, paths_file, cfg):
    "In a fresh process: time `load_model(safe=True)` + `predict` and measure its peak memory; print JSON"
    from breakhis_clf.inference import load_model, predict
    paths = Path(paths_file).read_text().split('\n')
    base = rss_mib()
    t = time.perf_counter()
    model = load_model(run_dir, safe=True, device=cfg.device)
    load_s = time.perf_counter() - t
    if cfg.device == 'cuda': torch.cuda.reset_peak_memory_stats()
    predict(model, paths[:cfg.bs], bs=cfg.bs, progress=False)  # warm-up
    preds = None
    def run():
        nonlocal preds; preds = predict(model, paths, bs=cfg.bs, progress=False)
    secs = timed(run, cfg.device)
    bad = preds[preds.error != '']
    if len(bad): raise RuntimeError(f"predict failed on {len(bad)} images, e.g. {bad.path.iloc[0]}: {bad.error.iloc[0]}")
    print(json.dumps(dict(images=len(paths), seconds=secs, images_per_s=len(paths)/secs, load_s=load_s,
                          rss_base_mib=base, rss_peak_mib=rss_mib(peak=True), rss_delta_mib=rss_mib(peak=True)-base,
                          cuda_peak_mib=torch.cuda.max_memory_allocated()/2**20 if cfg.device == 'cuda' else None)))

def bench_inference(dls, paths, tmp, cfg) -> dict:
    "Save a model with the package's `save_model`, then predict `paths` in a fresh process (for a clean peak memory)"
    try: from breakhis_clf.inference import save_model
    except ImportError as e: return dict(skipped=f"breakhis_clf.inference is not available yet ({e})")
    learn = breakhis_learner(dls, cfg.arch, pretrained=False, metrics=[])
    run_dir = save_model(learn, Path(tmp)/'run')
    pf = Path(tmp)/'paths.txt'
    pf.write_text('\n'.join(map(str, paths)))
    say(f"inference: load_model(safe=True) + predict on {len(paths)} images, bs {cfg.bs}, in a fresh process ...")
    cmd = [sys.executable, __file__, '--inference-child', str(run_dir), str(pf), '--device', cfg.device,
           '--bs', str(cfg.bs), '--arch', cfg.arch] + (['--threads', str(cfg.threads)] if cfg.threads else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode: raise RuntimeError(f"inference benchmark failed:\n{r.stderr[-3000:]}")
    return dict(json.loads(r.stdout.strip().splitlines()[-1]), bs=cfg.bs, source=f"raw {cfg.image_size[0]}x{cfg.image_size[1]} PNGs")

# ---------------------------------------------------------------------------------------------------- fine-tuning
def breakhis_sized(dest, n_images:int=BREAKHIS_IMAGES, unique_per_patient:int=2, size=(700, 460)) -> Path:
    "A synthetic BreakHis of `n_images` PNGs (82 patients): a few unique images each, copied under new numbers to size"
    root = make_synthetic_breakhis(dest, n_patients=82, images_per_patient=unique_per_patient, size=size)
    files = sorted(root.rglob('*.png'))
    for k in range(n_images - len(files)):
        src = files[k % len(files)]
        r = parse_name(src.name)
        shutil.copyfile(src, root/breakhis_relpath(r, r.seq + unique_per_patient*(1 + k//len(files))))
    return root

def bench_finetune(tmp, cfg, arch:str='resnet50', unique_per_patient:int=2, image_size=(700, 460), **overrides) -> dict:
    "Time the package's two-phase `train` (1 frozen + the CLI's unfrozen epochs) of `arch` on a BreakHis-sized set"
    try:
        from breakhis_clf.train import train
        from breakhis_clf.cli import run_defaults
    except ImportError as e: return dict(skipped=f"breakhis_clf.train / .cli are not available yet ({e})")
    d = {**run_defaults(synthetic=False), **overrides}  # the CLI's settings for real data: 224 px, 1+3 epochs
    say(f"finetune: writing {cfg.finetune_images} synthetic {image_size[0]}x{image_size[1]} PNGs ...")
    t = time.perf_counter()
    root = breakhis_sized(Path(tmp)/'breakhis', cfg.finetune_images, unique_per_patient, image_size)
    gen_s = time.perf_counter() - t
    df = patient_split(breakhis_df(root))
    dls = breakhis_dls(df, size=d['size'], bs=d['bs'], num_workers=cfg.num_workers)
    learn = breakhis_learner(dls, arch, pretrained=False)  # random weights train as fast as ImageNet's
    say(f"finetune: train({arch}, freeze_epochs=1, epochs={d['epochs']}) on {len(df)} images ...")
    t = time.perf_counter()
    train(learn, epochs=d['epochs'], freeze_epochs=1, base_lr=d['lr'], out=Path(tmp)/'run')
    sync(dls.device)
    return dict(arch=arch, images=len(df), train_images=int((~df.is_valid).sum()), epochs=d['epochs'], freeze_epochs=1,
                size=d['size'], bs=d['bs'], seconds=time.perf_counter() - t, generate_s=gen_s, num_workers=workers(dls),
                image_size=f"{image_size[0]}x{image_size[1]}")

# ---------------------------------------------------------------------------------------------------- report
def fmt(x, nd=1) -> str:
    "A number with thousands separators, or a dash for None"
    return '–' if x is None else f"{x:,.{nd}f}"

def train_table(tr) -> list:
    "Markdown rows for the training contenders (CPU-time columns only where the CPU does the work)"
    cpu = tr['device'] == 'cpu'
    oh = tr['overhead']['per_step']
    r = ['| Training loop | steps/s (median) | steps/s (best) | images/s (median) | vs PyTorch (median) | vs PyTorch (per repeat) |'
         + (' steps per CPU-second (median) | vs PyTorch (CPU time) |' if cpu else '')
         + ' fixed cost per step (tiny model) | vs PyTorch, from the fixed cost |',
         '|---|--:|--:|--:|--:|--:|' + ('--:|--:|' if cpu else '') + '--:|--:|']
    for k,v in tr['results'].items():
        r.append(f"| {k} | {fmt(v['median'], 2)} | {fmt(v['best'], 2)} | {fmt(v['images_per_s'])} | "
                 f"{v['ratio']:.2f} | {v['paired_ratio']:.2f} |"
                 + (f" {fmt(v['cpu_time']['median'], 2)} | {v['cpu_time']['ratio']:.2f} |" if cpu else '')
                 + (f" {oh[k]['extra_us']:+,.0f} µs | {oh[k]['expected_ratio']:.3f} |" if k in oh else ' – | – |'))
    return r

def data_table(data, cpu:bool) -> list:
    "Markdown rows for the loaders: rates and how many times faster than training consumes (per CPU-second on a CPU)"
    c, cc = data['consumption'], data.get('cpu_consumption')
    r = [f'| Images from | workers | images/s (median) | images/s (best) | ÷ consumption ({fmt(c)} img/s) |'
         + (f' images per CPU-second | ÷ consumption per CPU-second ({fmt(cc)}) |' if cpu else '') + ' goal ≥ 3x |',
         '|---|--:|--:|--:|--:|' + ('--:|--:|' if cpu else '') + ':-:|']
    for k,v in data['loaders'].items():
        if 'skipped' in v: r.append(f"| {k} | {v['skipped']} |" + ' – |'*(r[1].count('|') - 3)); continue
        x = v['median']/c if c else None
        xc = v['cpu_time']['median']/cc if cpu and cc else None
        ok = xc if cpu else x
        r.append(f"| {k} | {v['num_workers']} | {fmt(v['median'])} | {fmt(v['best'])} | {fmt(x, 2)}x |"
                 + (f" {fmt(v['cpu_time']['median'])} | {fmt(xc, 2)}x |" if cpu else '')
                 + f" {'–' if ok is None else ('yes' if ok >= 3 else 'no')} |")
    return r

LEGEND = ["- *PyTorch loop*: `model(x)`, `F.cross_entropy`, `backward`, `opt.step()`, `opt.zero_grad()` (plus autocast and "
          "`GradScaler` with mixed precision).",
          "- *fastai Learner (defaults)*: `Learner.fit` with its default callbacks (`TrainEvalCallback`, `Recorder`, "
          "`ProgressCallback`; the bar is drawn into a buffer) and torch's AdamW through `OptimWrapper`.",
          "- *no progress bar*: the same inside `learn.no_bar()` and `learn.no_logging()`.",
          "- *typed batches*: the same batches as `TensorImage`/`TensorCategory`, as fastai `DataLoaders` yield them: "
          "every tensor operation in the model then goes through fastai's `__torch_function__`.",
          "- *fastai Adam*: fastai's default optimizer (`fastai.optimizer.Adam`, a Python loop over parameters) with the "
          "same hyper-parameters; like every fastai optimizer it skips weight decay on batch-norm and bias parameters.",
          "- *steps per CPU-second*: steps divided by the CPU time this process used, which other programs on a shared "
          "machine barely change; the wall-clock columns are what a user waits for.",
          "- *fixed cost per step*: how much longer than the plain loop each contender takes per step on a tiny linear "
          "model, where the step itself costs almost nothing, so the difference is the loop's own cost (CPU time on a "
          "CPU, wall time on a GPU); *from the fixed cost* is the ratio that cost implies for the network above. "
          "Unlike the direct ratios it does not drown in the noise of a few long steps. It is not shown for typed "
          "batches and fastai's Adam, whose costs grow with the number of operations and parameter tensors of the "
          "network, which a tiny model does not have."]

def summary_rows(res) -> list:
    "The short table for the project README: one row per goal, GPU rows marked when not measured"
    hw, cfg, rows = res['hardware'], res['config'], []
    tr = res.get('train')
    if tr:
        pr = tr['paired']
        oh = tr['overhead']['per_step']['fastai Learner (defaults)']
        rows.append(f"| Training step time, fastai `Learner` ÷ plain PyTorch, median of {pr['pairs']} paired steps "
                    f"({tr['arch']}, {tr['size']} px, batch {tr['bs']}{', AMP + channels_last' if tr['amp'] else ''}) | "
                    f"{pr['ratio']:.2f} (quartiles {pr['q1']:.2f}–{pr['q3']:.2f}); from fastai's fixed cost per step "
                    f"({oh['extra_us']:+,.0f} µs) {1/oh['expected_ratio']:.3f} | ≤ 1.05 |")
    d = res.get('data')
    if d and d['consumption']:
        for k,v in d['loaders'].items():
            if 'median' not in v: continue
            cpu = (f"; per CPU-second {v['cpu_time']['median']/d['cpu_consumption']:.1f}x"
                   if cfg['device'] == 'cpu' and d.get('cpu_consumption') else '')
            rows.append(f"| Data loading ÷ training consumption, {k} | {v['median']/d['consumption']:.1f}x "
                        f"({v['median']:.0f} vs {d['consumption']:.0f} images/s){cpu} | ≥ 3x |")
    inf = res.get('inference')
    if inf and 'skipped' not in inf:
        mem = (f"CUDA peak {inf['cuda_peak_mib']:.0f} MiB" if inf['cuda_peak_mib'] is not None
               else f"+{inf['rss_delta_mib']:.0f} MiB RSS (peak {inf['rss_peak_mib']:.0f} MiB)")
        rows.append(f"| Inference, `load_model(safe=True)` + `predict`, {inf['source']} | {inf['images_per_s']:.0f} images/s, {mem} | – |")
    ft = res.get('finetune')
    if ft and 'skipped' not in ft:
        rows.append(f"| Two-phase {ft['arch']} `train`, {ft['images']} images ({ft['freeze_epochs']}+{ft['epochs']} epochs) | "
                    f"{ft['seconds']/60:.1f} min | – |")
    if cfg['device'] != 'cuda':
        rows.append("| GPU: the rows above with AMP + channels_last, and a 7,909-image two-phase ResNet-50 run | "
                    "**not yet measured** | – |")
    where = hw['gpu'] if cfg['device'] == 'cuda' else f"{hw['cpu']}, {hw['usable_cores']} cores, torch threads: {hw['torch_threads']}"
    return [f"| Benchmark ({cfg['mode']} mode; {where}; torch {hw['torch']}, fastai {hw['fastai']}) | Result | Goal |",
            '|---|---|---|', *rows]

def markdown(res) -> str:
    "The results as Markdown: hardware, setup and one table per section"
    hw, cfg = res['hardware'], res['config']
    dev = hw['gpu'] if cfg['device'] == 'cuda' else 'no GPU used'
    lines = [f"# breakhis-clf throughput: {cfg['mode']} mode on {cfg['device'].upper()}", '',
             f"Measured {res['when']} with `{res['command']}` in {res['wall_s']:.0f} s.", '',
             f"- **Hardware**: {hw['cpu']}, {hw['usable_cores']} usable cores ({hw['logical_cores']} logical), "
             f"{hw['memory_gib']} GiB RAM; {dev}.",
             f"- **Software**: torch {hw['torch']} (CPU threads: {hw['torch_threads']}), fastai {hw['fastai']}, "
             f"breakhis-clf {hw['breakhis_clf']}, Python {hw['python']}.",
             f"- **Machine load** (1-min load average): {res['load_before']:.1f} before, {res['load_after']:.1f} after."]
    if res.get('note'): lines.append(f"- **Note**: {res['note']}")
    if res['load_before'] > hw['usable_cores'] or res['load_after'] > hw['usable_cores']:
        lines.append(f"- **Busy machine**: the load average exceeded the {hw['usable_cores']} cores, so wall-clock rates are "
                     "noisy; the paired ratio and the per-CPU-second ratios are the reliable ones.")
    lines += ['', '## Summary', '', *summary_rows(res)]
    tr = res.get('train')
    if tr:
        pr = tr['paired']
        lines += ['', '## Training step: fastai `Learner` vs plain PyTorch', '',
                  f"**Paired steps** (the headline ratio, the last line the script prints): {pr['warmup']} warm-up pairs, "
                  f"then {pr['pairs']} pairs. In each pair the same batch trains a copy of the model once through "
                  f"`Learner.fit` (default callbacks, torch's AdamW through `OptimWrapper`; the batch comes from the fit "
                  f"loop's data iterator, which times the step) and once through the plain PyTorch step (forward, "
                  f"cross-entropy, backward, step, zero_grad), one right after the other; who goes first alternates "
                  f"(ABBA). A burst of load from other programs hits both steps of a pair alike, and the median of the "
                  f"per-pair ratios ignores the pairs it split.", '',
                  '| Paired steps | pairs | fastai ms (median) | PyTorch ms (median) | fastai ÷ PyTorch step time (median of pairs) | quartiles of the pair ratios | ratio of the median times |',
                  '|---|--:|--:|--:|--:|:-:|--:|',
                  f"| fastai Learner (defaults) vs PyTorch loop | {pr['pairs']} | {pr['fastai_ms']:,.1f} | {pr['torch_ms']:,.1f} | "
                  f"**{pr['ratio']:.3f}** | {pr['q1']:.3f}–{pr['q3']:.3f} | {pr['ratio_of_medians']:.3f} |", '',
                  "1.00 means fastai adds nothing; above 1 fastai is slower (the goal: at most 1.05). The contenders "
                  "below are raced in repeats of several steps instead, and their ratios are speeds (steps/s), the "
                  "other way round: below 1 is slower.", '',
                  f"{tr['arch']}, {tr['size']} px, batch {tr['bs']}, {tr['warmup']} warm-up steps then {tr['repeats']} "
                  f"interleaved repeats of {tr['steps']} steps; mixed precision {'on' if tr['amp'] else 'off'}, "
                  f"channels_last {'on' if tr['channels_last'] else 'off'}. Every contender trains a copy of the same "
                  f"model on the same pre-collated batches (on the device) with the same loss (cross-entropy) and "
                  f"optimizer ({tr['optimizer']}, lr {tr['lr']}), except the last row, which uses fastai's own `Adam` "
                  f"with the same hyper-parameters. 'per repeat' is the median of the per-repeat ratios.", '']
        lines += train_table(tr) + ['', *LEGEND]
    if res.get('data'):
        c = res['data']['consumption']
        lines += ['', '## Data pipeline: `breakhis_dls` training batches (decode + crop + augmentation + normalise)', '',
                  f"Images per second out of `dls.train`, against what the model consumes in training "
                  f"(fastai `Learner`, {fmt(c)} images/s, from the table above). On a CPU the loader and the model "
                  f"share the same cores, so both rates are upper bounds for a real epoch, and on a busy machine the "
                  f"loader's worker processes get only part of a core each: there the per-CPU-second columns (the "
                  f"workers' CPU time included) compare the cost of loading an image with the cost of training on it, "
                  f"whatever else runs.", '']
        lines += data_table(res['data'], cfg['device'] == 'cpu')
        if p := res['data'].get('preresize'):
            lines += ['', f"`preresize` (one-off, longer side {p['max_size']} px): {p['images']} images in "
                      f"{p['seconds']:.1f} s ({p['images']/p['seconds']:.0f} images/s)."]
    inf = res.get('inference')
    if inf:
        lines += ['', '## Inference: `load_model(safe=True)` + `predict`', '']
        if 'skipped' in inf: lines.append(f"Not measured: {inf['skipped']}.")
        else:
            cuda = f"{fmt(inf['cuda_peak_mib'])} MiB" if inf['cuda_peak_mib'] is not None else '–'
            lines += ['| images | batch | images/s | load_model s | peak RSS MiB | RSS added MiB | CUDA peak |',
                      '|--:|--:|--:|--:|--:|--:|--:|',
                      f"| {inf['images']} {inf['source']} | {inf['bs']} | {fmt(inf['images_per_s'])} | {inf['load_s']:.2f} | "
                      f"{fmt(inf['rss_peak_mib'], 0)} | {fmt(inf['rss_delta_mib'], 0)} | {cuda} |", '',
                      "Peak memory is measured in a fresh process: its peak resident memory after everything was "
                      "loaded, and how much of it the predictor added over the imports."]
    lines += ['', '## GPU: mixed precision + channels_last, and a BreakHis-sized run', '']
    ft = res.get('finetune')
    if cfg['device'] != 'cuda':
        lines += ['**GPU rows: not yet measured** (no GPU was available for this run). On a CUDA machine '
                  '`python bench/throughput.py` measures them: the tables above with fp16 mixed precision and '
                  'channels_last, and the time of a two-phase ResNet-50 `train` on a 7,909-image synthetic set.', '',
                  '| GPU benchmark | result |', '|---|---|',
                  '| fastai/torch train ratio, resnet50 224 px, AMP + channels_last | not yet measured |',
                  '| Data pipeline images/s vs consumption | not yet measured |',
                  '| Inference images/s, CUDA peak memory | not yet measured |',
                  '| Two-phase ResNet-50 run, 7,909 images (1 frozen + 3 unfrozen epochs) | not yet measured |']
    elif ft and 'skipped' not in ft:
        lines += [f"Two-phase `train` of {ft['arch']} (random weights: they train as fast as ImageNet's), {ft['freeze_epochs']} "
                  f"frozen + {ft['epochs']} unfrozen epochs, {ft['size']} px, batch {ft['bs']}, {ft['num_workers']} "
                  f"workers, on {ft['images']} synthetic {ft['image_size']} PNGs ({ft['train_images']} for training): "
                  f"**{ft['seconds']/60:.1f} min** (writing the images took {ft['generate_s']/60:.1f} min more)."]
    elif ft: lines.append(f"Fine-tuning run not measured: {ft['skipped']}.")
    else: lines.append('Fine-tuning run not measured (run without `--quick`, or with `--finetune`).')
    return '\n'.join(lines) + '\n'

def write_results(res, out) -> Path:
    "Write `res` as a new .json + .md pair in `out` (never overwriting) and return the .md path"
    out = Path(out); out.mkdir(parents=True, exist_ok=True)
    stem = f"{res['config']['mode']}-{res['config']['device']}-{time.strftime('%Y%m%d-%H%M%S')}"
    for i in range(1, 100):
        s = stem if i == 1 else f"{stem}-{i}"
        try:
            with open(out/f"{s}.json", 'x') as f: json.dump(res, f, indent=2, default=str)
        except FileExistsError: continue
        (out/f"{s}.md").write_text(markdown(res))
        return out/f"{s}.md"
    raise FileExistsError(f"{out}: no free results name for {stem}")

# ---------------------------------------------------------------------------------------------------- main
def run_data(root, tmp, cfg, consume=None, cpu_consume=None) -> dict:
    "Loader images/s from the raw PNGs, the `preresize` copy and the real sample"
    res = {}
    min_images = 4*cfg.bs
    say(f"data: raw {cfg.image_size[0]}x{cfg.image_size[1]} PNGs -> {cfg.size}px batches ...")
    res[f"raw {cfg.image_size[0]}x{cfg.image_size[1]} synthetic PNGs"] = loader_rate(split_dls(root, cfg, long_epochs=True), min_images, cfg.device)
    max_size = max(math.ceil(cfg.size*350/224), cfg.size)  # the package's default 350 px is for 224 px crops
    say(f"data: preresize to {max_size} px, then the same pipeline ...")
    n = len(list(root.rglob('*.png')))
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()): pre = preresize(root, Path(tmp)/'pre', max_size=max_size)
    pre_s = dict(images=n, seconds=time.perf_counter() - t, max_size=max_size)
    res[f"preresize copy ({max_size} px)"] = loader_rate(split_dls(pre, cfg, long_epochs=True), min_images, cfg.device)
    key = 'real BreakHis sample (../shared, 23 PNGs)'
    if SAMPLE.exists():
        say(f"data: real sample images in {SAMPLE} ...")
        res[key] = loader_rate(split_dls(SAMPLE, cfg, bs=min(cfg.bs, 8), long_epochs=True), min_images, cfg.device)
    else: res[key] = dict(skipped=f"not found at {SAMPLE}")
    return dict(loaders=res, preresize=pre_s, consumption=consume, cpu_consumption=cpu_consume)

def run_sections(cfg, res:dict):
    "Run every section not in `cfg.skip` on one synthetic set, adding their results to `res`"
    with tempfile.TemporaryDirectory(prefix='breakhis-bench-') as tmp:
        root = synthetic_set(tmp, cfg)
        dls = split_dls(root, cfg)
        if 'train' not in cfg.skip: res['train'] = bench_train(dls, cfg)
        fa = res['train']['results']['fastai Learner (defaults)'] if 'train' in res else None
        if 'data' not in cfg.skip:
            res['data'] = run_data(root, tmp, cfg, *([fa['images_per_s'], fa['cpu_time']['median']*cfg.bs] if fa else []))
        if 'inference' not in cfg.skip:
            paths = sorted(root.rglob('*.png'))
            res['inference'] = bench_inference(dls, [paths[i % len(paths)] for i in range(cfg.inference_images)], tmp, cfg)
        if cfg.finetune and 'finetune' not in cfg.skip: res['finetune'] = bench_finetune(tmp, cfg)

def main(argv=None):
    "Run the benchmarks, write the results, print them and, last, the fastai/torch ratio"
    cfg = get_args(argv)
    if cfg.threads: torch.set_num_threads(cfg.threads)
    if cfg.inference_child: return inference_child(*cfg.inference_child, cfg)
    torch.backends.cudnn.benchmark = True
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    argv = sys.argv[1:] if argv is None else argv
    res = dict(when=time.strftime('%Y-%m-%d %H:%M %Z'), command=shlex.join(['python', 'bench/throughput.py', *argv]),
               hardware=hardware(), config={**{k: v for k,v in vars(cfg).items() if k != 'inference_child'},
               'skip': sorted(cfg.skip)}, load_before=load0, note=cfg.note)
    say(f"breakhis-clf throughput, {cfg.mode} mode on {cfg.device} ({res['hardware']['cpu']}, "
        f"{torch.get_num_threads()} threads); load {load0:.1f}")
    run_sections(cfg, res)
    res['wall_s'], res['load_after'] = time.perf_counter() - t0, os.getloadavg()[0]
    md = write_results(res, cfg.out)
    say(markdown(res))
    say(f"results: {md} and {md.with_suffix('.json')}")
    if 'train' not in res: return print('fastai/torch train ratio: not measured (--skip train)', flush=True)
    pr = res['train']['paired']
    say(f"fastai step time / PyTorch step time over {pr['pairs']} pairs: median {pr['ratio']:.3f}, "
        f"quartiles {pr['q1']:.3f}-{pr['q3']:.3f} (IQR {pr['iqr']:.3f})")
    print(RATIO_LINE.format(pr['ratio']), flush=True)

if __name__ == '__main__': main()
