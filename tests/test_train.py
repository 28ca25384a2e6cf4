"""Tests for `breakhis_clf.train`: transfer learning works (the pretrained body beats the same model from scratch),
the two phases change what they should with the learning rates they should, the epoch log, seeds, and
`data_efficiency`."""
import matplotlib
matplotlib.use('Agg')
import pandas as pd, pytest, torch
from torch import nn
from fastai.callback.core import Callback

from breakhis_clf.data import UserError, make_synthetic_breakhis, breakhis_df, patient_split
from breakhis_clf.datablock import breakhis_dls
from breakhis_clf.learner import breakhis_learner
from breakhis_clf.train import *

ARCH = 'efficientnet_lite0'  # pretrained offline: its ImageNet weights come with pip


@pytest.fixture(scope='module')
def split_df(tmp_path_factory):
    "16 synthetic patients, 4 images each at 100X (where the synthetic tissue is clearest at 128 px); half of the patients validate (32 + 32 images)"
    root = make_synthetic_breakhis(tmp_path_factory.mktemp('syn'), n_patients=16, images_per_patient=4,
                                   magnifications=(100,), size=(350, 230), progress=False)
    return patient_split(breakhis_df(root), valid_pct=0.5)

@pytest.fixture(scope='module')
def dls(split_df):
    "128-pixel crops; the 32 training images repeated 3 times per epoch (12 batches), to learn from"
    return breakhis_dls(few_per_class(split_df, epoch_size=96), size=128, bs=8, aug=False, num_workers=0)

@pytest.fixture
def small_dls(split_df):
    "8 images at 32 px, repeated to 10 batches per epoch: for checks of the mechanics, not of accuracy"
    return breakhis_dls(few_per_class(split_df, n=4, epoch_size=40), size=32, bs=4, aug=False, num_workers=0)

def _quiet(learn):
    learn.remove_cb(learn.progress)
    return learn

def _state(learn): return {k: v.clone() for k, v in learn.model.state_dict().items()}

def _changed(a, b): return {k for k in a if not torch.equal(a[k], b[k])}

def _body_bn_keys(learn, buffers=True, params=True):
    "State-dict names of the body's batch-norm running statistics (`buffers`) and weights and biases (`params`)"
    return {f'0.{n}.{k}' for n, m in learn.model[0].named_modules() if isinstance(m, nn.BatchNorm2d)
            for k in m.state_dict() if (buffers if k.startswith(('running', 'num_batches')) else params)}

def _acc(learn): return learn.validate()[1]


def test_pretrained_frozen_phase_beats_the_same_model_from_scratch(dls):
    "The lesson of the course: two frozen epochs on a pretrained body beat the same recipe on a random body by far"
    accs = {}
    for pretrained in (True, False):
        learn = _quiet(breakhis_learner(dls, ARCH, pretrained=pretrained, seed=0))
        train(learn, epochs=0, freeze_epochs=2, base_lr=1e-2, seed=0)
        accs[pretrained] = _acc(learn)
    assert accs[True] >= 0.8 and accs[True] - accs[False] >= 0.25, accs

def test_train_converges_with_default_discriminative_rates(dls, tmp_path):
    "`train` with fastai's `lr_mult=100`: high accuracy, one log row per epoch, the last epoch kept"
    learn = _quiet(breakhis_learner(dls, ARCH, seed=0))
    train(learn, epochs=2, freeze_epochs=1, base_lr=1e-2, out=tmp_path, seed=0)
    loss, acc, bal_acc, f1, auc = learn.validate()
    assert acc >= 0.85 and bal_acc >= 0.85 and auc >= 0.9
    h = pd.read_csv(tmp_path/'history.csv')
    assert list(h.phase) == ['frozen', 'unfrozen', 'unfrozen'] and list(h.epoch) == [0, 1, 2]
    assert loss == pytest.approx(h.valid_loss.iloc[-1], abs=1e-4)  # the end of the schedule, not a chosen epoch
    assert learn.loss_history.step.is_monotonic_increasing and set(learn.loss_history.phase) == {'frozen', 'unfrozen'}

def test_monitor_keeps_the_best_epoch(small_dls, tmp_path):
    learn = _quiet(breakhis_learner(small_dls, ARCH, seed=0))
    train(learn, epochs=2, freeze_epochs=1, base_lr=1e-2, monitor='valid_loss', out=tmp_path, seed=0)
    h = pd.read_csv(tmp_path/'history.csv')
    assert learn.validate()[0] == pytest.approx(h.valid_loss.min(), abs=1e-3)
    assert learn.path == small_dls.path  # checkpoints went to a temporary folder

def test_frozen_phase_changes_only_head_and_batchnorm_of_the_pretrained_body(small_dls):
    learn = _quiet(breakhis_learner(small_dls, ARCH, seed=0))
    before = _state(learn)
    train(learn, epochs=0, freeze_epochs=1)
    ch = _changed(before, _state(learn))
    assert {k for k in ch if k.startswith('0.')} == _body_bn_keys(learn)  # body: every batch-norm tensor, nothing else
    assert {k for k in before if k.startswith('1.')} <= ch                # the whole head learned

def test_running_stats_move_even_with_train_bn_false(small_dls):
    "`train_bn=False` freezes batch norm's weight and bias; its running statistics still update in train mode"
    learn = _quiet(breakhis_learner(small_dls, ARCH, train_bn=False, seed=0))
    before = _state(learn)
    train(learn, epochs=0, freeze_epochs=1)
    ch = _changed(before, _state(learn))
    assert {k for k in ch if k.startswith('0.')} == _body_bn_keys(learn, params=False)

class GroupLRs(Callback):
    "Record every parameter group's learning rate at every training batch"
    def before_fit(self): self.lrs = []
    def after_batch(self):
        if self.training: self.lrs.append([h['lr'] for h in self.opt.hypers])

def test_unfrozen_phase_changes_body_with_rates_rising_to_the_head(small_dls):
    learn = _quiet(breakhis_learner(small_dls, ARCH, seed=0))
    before, rec = _state(learn), GroupLRs()
    train(learn, epochs=1, freeze_epochs=0, base_lr=2e-3, cbs=rec)
    ch = _changed(before, _state(learn))
    assert {k for k in ch if k.startswith('0.')} - _body_bn_keys(learn)  # convolutions changed
    assert len(rec.lrs) > 0
    for lrs in rec.lrs:
        assert len(lrs) == 3 and lrs[0] < lrs[1] < lrs[2]
        assert lrs[2]/lrs[0] == pytest.approx(100) and lrs[1]/lrs[0] == pytest.approx(10)
    assert max(l[2] for l in rec.lrs) == pytest.approx(1e-3)  # like fine_tune: base_lr/2 after the frozen phase (batch 3 of 10 is the peak)

def test_same_seed_same_result(small_dls):
    def run(seed):
        learn = _quiet(breakhis_learner(small_dls, 'resnet18', pretrained=False, seed=seed))
        train(learn, epochs=1, freeze_epochs=1, seed=seed)
        return _state(learn), learn.loss_history.train_loss.tolist()
    (a, la), (b, lb), (c, lc) = run(1), run(1), run(2)
    assert _changed(a, b) == set() and la == lb
    assert _changed(a, c) and la != lc  # a different seed does differ (the check can fail)

def test_seed_also_fixes_batch_order(small_dls):
    "The learner's init alone is not enough: `train(seed=...)` reseeds the loaders' shuffling too"
    learn = _quiet(breakhis_learner(small_dls, 'resnet18', pretrained=False, seed=0))
    seed_everything(learn, 3); first = [y.tolist() for _, y in learn.dls.train]
    seed_everything(learn, 3); again = [y.tolist() for _, y in learn.dls.train]
    assert first == again

def test_bad_arguments(small_dls, tmp_path):
    learn = _quiet(breakhis_learner(small_dls, 'resnet18', pretrained=False))
    with pytest.raises(UserError, match='roc_auc_score'): train(learn, monitor='auc')
    with pytest.raises(UserError, match='nothing to train'): train(learn, epochs=0, freeze_epochs=0)
    (tmp_path/'history.csv').write_text('earlier run')
    with pytest.raises(UserError, match='history.csv'): train(learn, out=tmp_path)
    assert (tmp_path/'history.csv').read_text() == 'earlier run'

def test_loss_plot(small_dls, tmp_path):
    learn = _quiet(breakhis_learner(small_dls, 'resnet18', pretrained=False))
    with pytest.raises(ValueError, match='loss_history'): save_loss_plot(learn, tmp_path/'x.png')
    train(learn, epochs=1, freeze_epochs=1)
    png = save_loss_plot(learn, tmp_path/'loss.png')
    assert png.read_bytes()[:4] == b'\x89PNG'
    with pytest.raises(UserError, match='loss.png'): save_loss_plot(learn, png)
    assert not (tmp_path/'x.png').exists()

def test_few_per_class(split_df):
    tr, va = split_df[~split_df.is_valid], split_df[split_df.is_valid]
    small = few_per_class(split_df, n=2, seed=0, epoch_size=12)
    t = small[~small.is_valid]
    assert len(t) == 12 and t.path.nunique() == 4 and set(t.drop_duplicates('path').label.value_counts()) == {2}
    assert small[small.is_valid].path.tolist() == va.path.tolist()           # validation untouched
    assert set(few_per_class(split_df, n=2, seed=1).path) != set(small.path)  # another seed, other images
    assert len(few_per_class(split_df)) == len(split_df)                     # None: every image, once
    assert len(few_per_class(split_df, epoch_size=len(tr)+5)) == len(split_df) + 5
    with pytest.raises(UserError, match='only 16'): few_per_class(split_df, n=17)

def test_data_efficiency_tiny(split_df):
    "One row per run and phase: pretrained gives two (frozen, fine-tuned), from scratch one"
    res = data_efficiency(split_df, n_per_class=(2, None), seeds=(0,), size=32, bs=4, freeze_epochs=1, epochs=1, progress=False)
    assert list(res.columns) == ['n_per_class', 'seed', 'model', 'accuracy', 'valid_loss']
    assert len(res) == 2*1*3
    assert sorted(res.n_per_class.unique()) == [2, 16]  # None: all 16 training images per class
    assert set(res.model) == {'pretrained, frozen body', 'pretrained, fine-tuned', 'from scratch'}
    assert res.accuracy.between(0, 1).all()
    ax = plot_data_efficiency(res)
    assert len(ax.get_lines()) == 4  # three models and the chance line
