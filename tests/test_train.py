"Tests for `breakhis_clf.train`: the two phases, discriminative rates, best-epoch checkpoint, CSV log, seeds."
import pandas as pd, pytest, torch
from torch import nn
from fastai.callback.core import Callback

from breakhis_clf.data import UserError, make_synthetic_breakhis, breakhis_df, patient_split
from breakhis_clf.datablock import breakhis_dls
from breakhis_clf.learner import breakhis_learner
from breakhis_clf.train import *


@pytest.fixture(scope='module')
def split_df(tmp_path_factory):
    root = make_synthetic_breakhis(tmp_path_factory.mktemp('syn'), n_patients=16, images_per_patient=6,
                                   magnifications=(40, 100), size=(140, 92), progress=False)
    return patient_split(breakhis_df(root))

@pytest.fixture(scope='module')
def dls(split_df):
    "Enough synthetic images to learn from: 144 training, 48 validation, 64 px"
    return breakhis_dls(split_df, size=64, bs=16, aug=False, num_workers=0)

@pytest.fixture
def small_dls(split_df):
    "A few images at 32 px: for checks of the mechanics, not of accuracy"
    df = split_df[split_df.magnification == 40].groupby('patient_id').head(2)
    return breakhis_dls(df, size=32, bs=8, aug=False, num_workers=0)

def _quiet(learn):
    learn.remove_cb(learn.progress)
    return learn

def _state(learn): return {k: v.clone() for k, v in learn.model.state_dict().items()}

def _changed(a, b): return {k for k in a if not torch.equal(a[k], b[k])}

def _body_bn_keys(learn):
    return {f'0.{n}.{k}' for n, m in learn.model[0].named_modules() if isinstance(m, nn.BatchNorm2d)
            for k in m.state_dict()}


def test_short_run_learns_the_synthetic_signal(dls, tmp_path):
    "From scratch, a few epochs on synthetic data reach >= 0.85 validation accuracy"
    learn = _quiet(breakhis_learner(dls, 'resnet18', pretrained=False, seed=0))
    train(learn, epochs=4, freeze_epochs=1, base_lr=2e-2, lr_mult=1, out=tmp_path, seed=0)
    loss, acc, bal_acc, f1, auc = learn.validate()
    assert acc >= 0.85 and bal_acc >= 0.85 and auc >= 0.9
    h = pd.read_csv(tmp_path/'history.csv')
    assert list(h.phase) == ['frozen'] + ['unfrozen']*4 and list(h.epoch) == [0, 1, 2, 3, 4]
    assert loss == pytest.approx(h.valid_loss.min(), abs=1e-3)  # the best epoch was kept, not the last
    assert learn.loss_history.step.is_monotonic_increasing and set(learn.loss_history.phase) == {'frozen', 'unfrozen'}

def test_frozen_phase_changes_only_head_and_batchnorm(small_dls):
    learn = _quiet(breakhis_learner(small_dls, 'resnet18', pretrained=False, seed=0))
    before = _state(learn)
    train(learn, epochs=0, freeze_epochs=1, monitor='train_loss')
    ch, bn = _changed(before, _state(learn)), _body_bn_keys(learn)
    assert {k for k in ch if k.startswith('0.')} <= bn   # body: batch norm only
    assert ch & bn                                        # ...which did adapt
    assert {k for k in before if k.startswith('1.') and 'num_batches' not in k} <= ch  # the whole head learned

class GroupLRs(Callback):
    "Record every parameter group's learning rate at every training batch"
    def before_fit(self): self.lrs = []
    def after_batch(self):
        if self.training: self.lrs.append([h['lr'] for h in self.opt.hypers])

def test_unfrozen_phase_changes_body_with_rates_rising_to_the_head(small_dls):
    learn = _quiet(breakhis_learner(small_dls, 'resnet18', pretrained=False, seed=0))
    before, rec = _state(learn), GroupLRs()
    train(learn, epochs=1, freeze_epochs=0, base_lr=2e-3, monitor='train_loss', cbs=rec)
    ch = _changed(before, _state(learn))
    assert {k for k in ch if k.startswith('0.')} - _body_bn_keys(learn)  # convolutions changed
    assert len(rec.lrs) > 0
    for lrs in rec.lrs:
        assert lrs[0] < lrs[1] < lrs[2]
        assert lrs[2]/lrs[0] == pytest.approx(100)
    assert max(l[2] for l in rec.lrs) == pytest.approx(1e-3, rel=0.02)  # like fine_tune: base_lr/2 after the frozen phase

def test_same_seed_same_result(small_dls):
    def run(seed):
        learn = _quiet(breakhis_learner(small_dls, 'resnet18', pretrained=False, seed=seed))
        train(learn, epochs=1, freeze_epochs=1, monitor='train_loss', seed=seed)
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
    train(learn, epochs=1, freeze_epochs=1, monitor='train_loss')
    png = save_loss_plot(learn, tmp_path/'loss.png')
    assert png.read_bytes()[:4] == b'\x89PNG'
    with pytest.raises(UserError, match='loss.png'): save_loss_plot(learn, png)
    assert not (tmp_path/'x.png').exists()
