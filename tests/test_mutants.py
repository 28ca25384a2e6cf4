"""Tests that tell right from wrong (issue 12): each one fails on a hand-made bug that the rest of the suite let pass.
Keeping the best epoch across both phases of `train`, patient scores as mean probabilities, the evaluation warning about
patients seen in training, and 16-bit PNGs rescaled rather than cut to their low byte."""
import shutil, warnings

import numpy as np, pandas as pd, pytest, torch
from PIL import Image
from fastai.callback.core import Callback

from breakhis_clf.data import breakhis_df, patient_split, load_rgb
from breakhis_clf.datablock import breakhis_dls
from breakhis_clf.learner import breakhis_learner
from breakhis_clf.train import train
from breakhis_clf.evaluate import META_COLS, predictions_table, patient_scores
from breakhis_clf.inference import save_model, evaluate_run


# --- the best epoch is kept, across both phases of `train` -----------------------------------------

@pytest.fixture(scope='module')
def dls(synth_root):
    "The 200X images of the synthetic set (16 patients, 2 images each), half of the patients validating, 64 px"
    df = patient_split(breakhis_df(synth_root, magnifications=[200]), valid_pct=0.5, seed=0)
    return breakhis_dls(df, size=64, bs=8, aug=False, num_workers=0, seed=0)

def _state(learn): return {k: v.detach().clone() for k, v in learn.model.state_dict().items()}

class Spoil(Callback):
    "Add large noise to the last layer before validating the epochs `when(fit, epoch, n_epoch)` names: for good ('keep') or for that validation only ('undo')"
    def __init__(self, when): self.when,self.fits,self.snaps,self.saved = when,0,[],None
    def before_fit(self): self.fits += 1
    def before_validate(self):
        if not (how := self.when(self.fits, self.epoch, self.n_epoch)): return
        lin = self.learn.model[-1][-1]
        if how == 'undo': self.saved = lin.weight.detach().clone()
        g = torch.Generator().manual_seed(10*self.fits + self.epoch)
        with torch.no_grad(): lin.weight.add_(5*torch.randn(lin.weight.shape, generator=g))
    def after_validate(self):
        self.snaps.append(_state(self.learn))  # the weights this epoch's validation loss belongs to
        if self.saved is not None:
            with torch.no_grad(): self.learn.model[-1][-1].weight.copy_(self.saved)
            self.saved = None

def _run(dls, out, when, freeze_epochs, epochs):
    "Train with `monitor='valid_loss'` and the `Spoil` callback: (learner, history.csv, snapshots per epoch)"
    learn = breakhis_learner(dls, 'efficientnet_lite0', pretrained=False, seed=0)
    cb = Spoil(when)
    with learn.no_bar(), learn.no_logging():
        train(learn, epochs, freeze_epochs, base_lr=1e-2, monitor='valid_loss', out=out, seed=0, cbs=cb)
    h = pd.read_csv(out/'history.csv')
    assert list(h.phase) == ['frozen']*freeze_epochs + ['unfrozen']*epochs and len(cb.snaps) == len(h)
    return learn, h, cb.snaps

def _assert_kept(learn, h, snaps):
    "The model holds the weights, and gives the validation loss, of the epoch with the lowest validation loss"
    best = int(h.valid_loss.idxmin())
    with learn.no_bar(), learn.no_logging(): loss = learn.validate()[0]
    assert loss == pytest.approx(h.valid_loss[best], abs=1e-4), (loss, h.valid_loss.tolist())
    now = learn.model.state_dict()
    assert all(torch.equal(now[k], v) for k, v in snaps[best].items()), f"the kept weights are not epoch {best}'s"

def test_train_keeps_the_best_epoch_not_the_last(dls, tmp_path):
    "The best epoch is an early unfrozen one and the last is spoiled: `train` must end with the best epoch's weights and loss"
    # the frozen epoch validates with spoiled weights (undone afterwards), so it cannot be the best; the last epoch is spoiled for good
    when = lambda fit, e, n: 'undo' if fit == 1 else 'keep' if e == n-1 else None
    learn, h, snaps = _run(dls, tmp_path, when, freeze_epochs=1, epochs=3)
    v = h.valid_loss
    assert v.idxmin() in (1, 2) and v.iloc[-1] > v.iloc[1:3].max() + 1, v.tolist()  # the spoiling worked
    _assert_kept(learn, h, snaps)

def test_train_keeps_a_frozen_phase_best_when_unfreezing_only_hurts(dls, tmp_path):
    "Every unfrozen epoch is spoiled: the best epoch is in the frozen phase, and the first fit's best must survive the second fit"
    learn, h, snaps = _run(dls, tmp_path, lambda fit, e, n: 'keep' if fit == 2 else None, freeze_epochs=2, epochs=2)
    frozen, unfrozen = h.valid_loss[h.phase == 'frozen'], h.valid_loss[h.phase == 'unfrozen']
    assert unfrozen.min() > frozen.max() + 1, h.valid_loss.tolist()  # the spoiling worked
    _assert_kept(learn, h, snaps)


# --- patients are scored by their mean probabilities, not by a vote of their images -----------------

def _preds(p_malignant:dict) -> pd.DataFrame:
    "A predictions table: patient id -> (label, P(malignant) of each of its images)"
    rows = [dict(path=f'SOB_{l[0].upper()}_{tt}-{pid}-200-{i+1:03d}.png', patient_id=pid, case_id=f'SOB_{l[0].upper()}_{tt}_{pid}',
                 magnification=200, tumor_type=tt, label=l)
            for pid, (l, ps) in p_malignant.items() for i, _ in enumerate(ps) for tt in ['DC' if l == 'malignant' else 'A']]
    p = np.array([q for _, ps in p_malignant.values() for q in ps])
    return predictions_table(pd.DataFrame(rows)[list(META_COLS)], np.stack([1-p, p], 1), ['benign', 'malignant'])

def test_patient_scores_are_mean_probabilities_not_votes():
    "Mean P(malignant) and a majority vote of the images disagree on both patients: the mean decides"
    preds = _preds({'99-10001A': ('malignant', [0.95, 0.45, 0.45]), '99-10002B': ('benign', [0.55, 0.55, 0.05])})
    assert list(preds.predicted) == ['malignant', 'benign', 'benign', 'malignant', 'malignant', 'benign']
    ps = patient_scores(preds)
    m, b = ps.loc['99-10001A'], ps.loc['99-10002B']
    assert (m.predicted, b.predicted) == ('malignant', 'benign')
    assert m.p_malignant == pytest.approx(1.85/3, abs=1e-4) and m.p_benign == pytest.approx(1.15/3, abs=1e-4)
    assert b.p_malignant == pytest.approx(1.15/3, abs=1e-4) and b.p_benign == pytest.approx(1.85/3, abs=1e-4)
    # `confidence` is the mean probability of the predicted class: P(malignant) for the malignant call, P(benign) for the
    # benign one (both 0.6167); never always P(malignant) (0.3833 for the benign patient), nor the mean of the images' confidences (0.6833)
    assert m.confidence == pytest.approx(0.6167, abs=1e-4) and b.confidence == pytest.approx(0.6167, abs=1e-4)
    assert (m.n_images, b.n_images) == (3, 3)
    assert (m.recognition_rate, b.recognition_rate) == pytest.approx((1/3, 1/3))  # Spanhol's rate: one image in three right


# --- `evaluate_run` warns about patients seen in training, and only about those ---------------------

@pytest.fixture(scope='module')
def run(synth_root, tmp_path_factory):
    "(run folder, split table): a resnet18 trained one epoch on the 200X training patients, saved with its split.csv"
    df = patient_split(breakhis_df(synth_root, magnifications=[200]), valid_pct=0.25, test_pct=0.25, seed=0)
    learn = breakhis_learner(breakhis_dls(df, size=32, bs=8, aug=False, num_workers=0, seed=0), 'resnet18',
                             pretrained=False, seed=0)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    run = save_model(learn, tmp_path_factory.mktemp('run')/'run')
    df[['path', 'patient_id', 'case_id', 'label', 'tumor_type', 'magnification', 'subset', 'is_valid']].to_csv(run/'split.csv', index=False)
    return run, df

def _folder(df, patients, dest):
    "A flat folder holding copies of the images of `patients`"
    dest.mkdir()
    for p in df.path[df.patient_id.isin(patients)]: shutil.copy(p, dest)
    return dest

def _seen_warnings(run_dir, data, out):
    "The messages of the warnings about patients used for training that `evaluate_run` gives on `data`"
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        evaluate_run(run_dir, data=data, n_boot=0, progress=False, out=out)
    return [str(w.message) for w in ws if 'used for training' in str(w.message)]

def test_evaluate_warns_about_training_patients_only(run, tmp_path):
    "Two training and two validation patients: one warning, counting and naming training patients; validation or test patients only: none"
    run_dir, df = run
    pats = {s: sorted(df.patient_id[df.subset == s].unique()) for s in ('train', 'valid', 'test')}
    assert all(len(v) >= 2 for v in pats.values()), pats
    mixed = _folder(df, pats['train'][:2] + pats['valid'][:2], tmp_path/'mixed')
    ws = _seen_warnings(run_dir, mixed, tmp_path/'report-mixed')
    assert len(ws) == 1 and '2 of the 4 patients' in ws[0], ws
    assert any(p in ws[0] for p in pats['train'][:2]) and not any(p in ws[0] for p in pats['valid'])
    for s in ('valid', 'test'):  # patients the model never saw: silence
        ws = _seen_warnings(run_dir, _folder(df, pats[s], tmp_path/f'only-{s}'), tmp_path/f'report-{s}')
        assert ws == [], (s, ws)


# --- 16-bit PNGs are rescaled to 8 bits, not cut to their low byte -----------------------------------

def test_16bit_png_is_rescaled_not_truncated(tmp_path):
    "40000 and 10000 (whose low bytes are 64 and 16) become about 156 and 39: 16-bit values scaled by 255/65535"
    a = np.full((8, 8), 40000, dtype=np.uint16)
    a[:, 4:] = 10000
    fn = tmp_path/'sixteen.png'
    Image.fromarray(a).save(fn)
    with Image.open(fn) as im: assert im.mode.startswith('I')  # really a 16-bit image on disk
    x = np.asarray(load_rgb(fn))
    assert x.dtype == np.uint8 and x.shape == (8, 8, 3)
    hi, lo = x[:, :4], x[:, 4:]
    assert np.abs(hi.astype(float) - 40000/65535*255).max() <= 1 and np.abs(lo.astype(float) - 10000/65535*255).max() <= 1
    assert (hi > lo).all()
