"Evaluation: metrics equal scikit-learn's, patient aggregation, patient bootstrap, report files; Grad-CAM and `evaluate_run` on a tiny model."
import json, os, warnings
from pathlib import Path

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np, pandas as pd, pytest
from PIL import Image
from sklearn import metrics as skm

from breakhis_clf.data import UserError, breakhis_df, patient_split, TUMOR_TYPES
from breakhis_clf.evaluate import *
import breakhis_clf.evaluate as evaluate_mod
from breakhis_clf.interpret import cam_layer, model_input, gradcam, show_gradcam, plot_gradcams
from breakhis_clf.inference import evaluate_run

# ---------------------------------------------------------------- made-up predictions tables

def binary_preds(p_malignant, labels, patients, mags=None, types=None):
    "A predictions table for the benign/malignant task from P(malignant) per image"
    p = np.asarray(p_malignant, dtype=float)
    n = len(p)
    df = pd.DataFrame(dict(path=[f'img{i}.png' for i in range(n)], patient_id=patients,
                           magnification=mags or [40]*n, tumor_type=types or ['X']*n, label=labels))
    df['predicted'] = np.where(p > 0.5, 'malignant', 'benign')
    df['confidence'], df['p_benign'], df['p_malignant'] = np.maximum(p, 1-p), 1-p, p
    return df

def random_binary(n_patients, n_images=5, seed=0, noise=0.3):
    "Noisy binary predictions of `n_patients` patients"
    rng = np.random.default_rng(seed)
    mal = np.repeat(rng.random(n_patients) < 0.6, n_images)
    p = np.clip(np.where(mal, 0.65, 0.35) + rng.normal(0, noise, len(mal)), 0, 1)
    return binary_preds(p, np.where(mal, 'malignant', 'benign').tolist(),
                        np.repeat([f'P{i}' for i in range(n_patients)], n_images).tolist(),
                        mags=np.resize([40, 100, 200, 400], len(mal)).tolist())

def random_multiclass(n_patients=24, n_images=4, seed=0):
    "Noisy 8-class (tumour type) predictions"
    rng = np.random.default_rng(seed)
    cs = sorted(TUMOR_TYPES)
    truth = np.repeat([cs[i % len(cs)] for i in range(n_patients)], n_images)
    logits = rng.normal(0, 1, (len(truth), len(cs))) + 1.5*(np.array(cs)[None] == truth[:, None])
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    df = pd.DataFrame(dict(path=[f'i{i}.png' for i in range(len(truth))],
                           patient_id=np.repeat([f'P{i}' for i in range(n_patients)], n_images),
                           magnification=40, tumor_type=truth,
                           label=['benign' if t in ('A', 'F', 'PT', 'TA') else 'malignant' for t in truth]))
    df['predicted'] = np.array(cs)[probs.argmax(1)]
    df['confidence'] = probs.max(1)
    for i, c in enumerate(cs): df[f'p_{c}'] = probs[:, i]
    return df

# ---------------------------------------------------------------- image level = scikit-learn

def test_image_metrics_equal_sklearn_binary():
    preds = random_binary(40, seed=3)
    y, yhat = preds.label, preds.predicted
    m = image_metrics(preds)
    assert m['accuracy'] == pytest.approx(skm.accuracy_score(y, yhat))
    assert m['recognition_rate'] == pytest.approx(skm.accuracy_score(y, yhat))
    assert m['balanced_accuracy'] == pytest.approx(skm.balanced_accuracy_score(y, yhat))
    assert m['roc_auc'] == pytest.approx(skm.roc_auc_score(y == 'malignant', preds.p_malignant))
    assert m['confusion_matrix'] == skm.confusion_matrix(y, yhat, labels=['benign', 'malignant']).tolist()
    ref = skm.classification_report(y, yhat, output_dict=True, zero_division=0)
    for c in ('benign', 'malignant'):
        for k in ('precision', 'recall', 'f1-score', 'support'):
            assert m['classification_report'][c][k] == pytest.approx(ref[c][k])

def test_image_metrics_equal_sklearn_multiclass():
    preds = random_multiclass()
    assert truth_col(preds) == 'tumor_type' and not is_binary(preds)
    cs = class_names(preds)
    y, yhat = preds.tumor_type, preds.predicted
    m = image_metrics(preds)
    assert m['accuracy'] == pytest.approx(skm.accuracy_score(y, yhat))
    assert m['balanced_accuracy'] == pytest.approx(skm.balanced_accuracy_score(y, yhat))
    assert m['roc_auc'] == pytest.approx(skm.roc_auc_score(y, preds[[f'p_{c}' for c in cs]].to_numpy(),
                                                             multi_class='ovr', average='macro', labels=cs))
    assert m['confusion_matrix'] == skm.confusion_matrix(y, yhat, labels=cs).tolist()

def test_auc_undefined_with_one_class():
    preds = random_binary(10)
    assert np.isnan(roc_auc(preds[preds.label == 'benign']))

def test_unknown_true_class_is_an_error():
    preds = random_binary(4)
    preds.loc[0, 'label'] = 'normal'
    with pytest.raises(UserError, match='normal'): image_metrics(preds)

# ---------------------------------------------------------------- patient level, by hand

@pytest.fixture
def table():
    # P1 malignant: .9 .8 .3 .6 -> mean .65 -> malignant; images right: 3/4
    # P2 benign:    .2 .4 .7    -> mean .4333 -> benign;  images right: 2/3
    # P3 benign:    .6 .8       -> mean .7 -> malignant (wrong); images right: 0/2
    return binary_preds([.9, .8, .3, .6, .2, .4, .7, .6, .8],
                        ['malignant']*4 + ['benign']*5, ['P1']*4 + ['P2']*3 + ['P3']*2,
                        mags=[40, 100, 200, 400, 40, 100, 200, 40, 100])

def test_patient_scores_by_hand(table):
    ps = patient_scores(table)
    assert list(ps.index) == ['P1', 'P2', 'P3']
    assert ps.p_malignant.tolist() == pytest.approx([(.9+.8+.3+.6)/4, (.2+.4+.7)/3, (.6+.8)/2])
    assert ps.predicted.tolist() == ['malignant', 'benign', 'malignant']
    assert ps.confidence.tolist() == pytest.approx([(.9+.8+.3+.6)/4, 1 - (.2+.4+.7)/3, (.6+.8)/2])  # P2: its P(benign)
    assert ps.n_images.tolist() == [4, 3, 2]
    assert ps.recognition_rate.tolist() == pytest.approx([3/4, 2/3, 0])

def test_patient_metrics_by_hand(table):
    assert patient_recognition_rate(table) == pytest.approx((3/4 + 2/3 + 0)/3)
    pm = patient_metrics(table)
    assert pm['accuracy'] == pytest.approx(2/3)
    assert pm['balanced_accuracy'] == pytest.approx((1/2 + 1)/2)  # benign recall 1/2, malignant recall 1
    assert pm['confusion_matrix'] == [[1, 1], [0, 1]]
    assert pm['roc_auc'] == pytest.approx(0.5)  # P1 (.65) beats P2 (.433), loses to P3 (.7)
    hm = headline_metrics(table)
    assert hm['image_accuracy'] == pytest.approx(5/9)  # .9 .8 .6 right; .2 .4 right; .3 .7 .6 .8 wrong
    assert hm['patient_recognition_rate'] == pytest.approx((3/4 + 2/3)/3)

def test_multiclass_patient_argmax_of_mean_probabilities():
    preds = random_multiclass(n_patients=8, n_images=3, seed=1)
    cs = class_names(preds)
    ps = patient_scores(preds)
    p0 = preds[preds.patient_id == 'P0'][[f'p_{c}' for c in cs]].mean()
    assert ps.loc['P0', 'predicted'] == cs[int(np.argmax(p0.to_numpy()))]
    assert ps.loc['P0', 'confidence'] == pytest.approx(p0.max())
    assert ps.loc['P0', 'tumor_type'] == preds.tumor_type[0]

def test_patient_with_two_labels_is_an_error(table):
    with pytest.raises(UserError, match='more than one label'): patient_scores(table.assign(patient_id='P1'))

def test_by_group_by_hand(table):
    bm = by_group(table, 'magnification')
    assert bm.index.tolist() == [40, 100, 200, 400]
    assert bm.n_images.tolist() == [3, 3, 2, 1]
    assert bm.loc[40, 'image_accuracy'] == pytest.approx(2/3)  # .9 right, .2 right, .6 (benign) wrong
    assert bm.loc[200, 'image_accuracy'] == pytest.approx(0)   # .3 (malignant) and .7 (benign) wrong

# ---------------------------------------------------------------- bootstrap over patients

def test_bootstrap_contains_estimate_and_narrows():
    acc = lambda d: image_metrics(d, full=False)['accuracy']
    small, large = random_binary(20, seed=1), random_binary(320, seed=1)
    lo, hi = bootstrap_ci(small, acc, n=300)
    lo2, hi2 = bootstrap_ci(large, acc, n=300)
    assert lo <= acc(small) <= hi and lo2 <= acc(large) <= hi2
    assert (hi2 - lo2) < (hi - lo) / 2  # 16x the patients: about a quarter of the width

def test_bootstrap_resamples_patients_not_images():
    # 10 patients of 50 images, each patient all right or all wrong: the uncertainty is that of 10 cases
    right = np.repeat(np.arange(10) < 7, 50)
    preds = binary_preds(np.where(right, 0.9, 0.1), ['malignant']*500, np.repeat([f'P{i}' for i in range(10)], 50).tolist())
    lo, hi = bootstrap_ci(preds, lambda d: image_metrics(d, full=False)['accuracy'], n=300)
    assert hi - lo > 0.3  # resampling the 500 images would give about 0.08
    counts = bootstrap_counts(10, n=1, seed=0)[0]
    assert counts.sum() == 10 and (counts != 1).any()  # some patients drawn twice or more, some not at all
    res = resample_patients(preds, counts)
    assert len(res) == 500 and res.patient_id.nunique() == 10
    assert (res.groupby('patient_id').size() == 50).all()
    assert res.path.value_counts().max() == counts.max()  # a patient drawn k times brings each image k times

def test_bootstrap_dict_metric_and_seed():
    preds = random_binary(15)
    ci = bootstrap_ci(preds, headline_metrics, n=50, seed=2)
    assert set(ci) == set(headline_metrics(preds))
    assert ci == bootstrap_ci(preds, headline_metrics, n=50, seed=2)  # reproducible ...
    assert ci != bootstrap_ci(preds, headline_metrics, n=50, seed=3)  # ... and the seed matters
    # the interval is the percentile interval of the metric on the resampled tables, here built by hand
    pats = sorted(preds.patient_id.unique())
    draws = np.random.default_rng(2).multinomial(len(pats), np.full(len(pats), 1/len(pats)), size=50)
    accs = [image_metrics(pd.concat([preds[preds.patient_id == p] for p, k in zip(pats, row) for _ in range(k)]), full=False)['accuracy']
            for row in draws]
    assert ci['image_accuracy'] == pytest.approx(tuple(np.percentile(accs, [2.5, 97.5])), abs=1e-12)
    with pytest.raises(UserError, match='at least 2 patients'): bootstrap_ci(preds[preds.patient_id == 'P0'], headline_metrics)

def test_weighted_auc_equals_sklearn_on_repeated_items():
    rng = np.random.default_rng(1)
    scores, pos = rng.integers(0, 6, 60) / 5, rng.random(60) < 0.4  # many ties
    w = rng.integers(0, 4, (5, 60))
    got = weighted_auc(scores, pos, w)
    ref = [skm.roc_auc_score(np.repeat(pos, k), np.repeat(scores, k)) for k in w]
    np.testing.assert_allclose(got, ref, atol=1e-12)
    assert np.isnan(weighted_auc(scores, pos, np.where(pos, 0, w))).all()  # no positives left: undefined

@pytest.mark.parametrize('kind', ['binary', 'multiclass', 'two-cases'])
def test_vectorised_bootstrap_equals_resampled_tables(kind):
    "Every number of every resample, computed with weights, equals the one computed on the resampled table"
    preds = random_binary(12, n_images=8, seed=4) if kind == 'binary' else random_multiclass(n_patients=16, n_images=4, seed=2)
    if kind != 'binary': preds['magnification'] = np.resize([40, 100, 200, 400], len(preds))
    if kind == 'two-cases':  # eight classes are scored per case; P3 (lobular) becomes a second case of P1 (ductal)
        preds['case_id'] = 'SOB_' + preds.tumor_type + '_' + preds.patient_id
        preds['patient_id'] = preds.patient_id.replace('P3', 'P1')
        assert preds[preds.patient_id == 'P1'].case_id.nunique() == 2
    counts = bootstrap_counts(preds.patient_id.nunique(), n=25, seed=5)
    fast = resampled_stats(preds, counts, ci_by=['magnification'])
    for i, c in enumerate(counts):
        slow = evaluation_report(resample_patients(preds, c), n_boot=0, progress=False)
        assert fast['image_accuracy'][i] == pytest.approx(slow['headline']['image_accuracy'])
        for k, v in slow['headline'].items():
            if v is None: assert np.isnan(fast[k][i]), k
            else: assert fast[k][i] == pytest.approx(v, abs=1e-12), k
        for mag, row in slow['by_magnification'].items():
            for k in ('image_accuracy', 'patient_accuracy', 'patient_recognition_rate'):
                assert fast[('magnification', int(mag), k)][i] == pytest.approx(row[k], abs=1e-12), (mag, k)
    if kind != 'binary': assert np.isnan(fast['patient_roc_auc']).any()  # resamples missing a class: AUC undefined

def test_report_ci_equals_generic_bootstrap():
    from functools import partial
    preds = random_binary(20, n_images=6, seed=7)
    fast = report_ci(preds, n=40, seed=3, ci_by=['magnification'], chunk=100)  # several chunks
    slow = bootstrap_ci(preds, partial(evaluate_mod._report_stats, ci_by=['magnification']), n=40, seed=3)
    assert set(fast) == set(slow)
    for k in fast: assert fast[k] == pytest.approx(slow[k], abs=1e-12), k

def test_default_bootstrap_is_quick():
    "1,000 resamples of a typical validation split (100 patients x 30 images) take seconds, not minutes"
    import time
    preds = random_binary(100, n_images=30, seed=0)
    t = time.perf_counter()
    rep = evaluation_report(preds, progress=False)
    assert rep['ci']['n_boot'] == 1000
    assert time.perf_counter() - t < 10  # about 0.5 s on one CPU core; the table-per-resample way took ~80 s

def test_report_is_strict_json_and_reproducible(tmp_path):
    preds = random_binary(12)
    rep = evaluation_report(preds, n_boot=30, progress=False)
    assert json.loads(json.dumps(rep, allow_nan=False)) == rep
    lo, hi = rep['ci']['patient_accuracy']
    assert lo <= rep['headline']['patient_accuracy'] <= hi
    assert set(rep['ci_by_magnification']) == {'40', '100', '200', '400'}
    out = write_report(preds, rep, tmp_path/'r')
    again = evaluation_report(pd.read_csv(out/'predictions.csv'), n_boot=30, progress=False)
    assert again == json.loads((out/'metrics.json').read_text())
    with pytest.raises(UserError, match='not empty'): write_report(preds, rep, out)

def test_multiclass_report_files(tmp_path):
    preds = random_multiclass()
    rep = evaluation_report(preds, n_boot=10, progress=False)
    out = write_report(preds, rep, tmp_path/'r')
    assert sorted(o.name for o in out.iterdir()) == sorted(REPORT_FILES)
    assert '8 classes (tumor_type)' in (out/'summary.md').read_text()

# ---------------------------------------------------------------- one meaning of `confidence`

def _meta(n, patients):
    "The image columns of a predictions table for `n` images of `patients`"
    return pd.DataFrame(dict(path=[f'img{i}.png' for i in range(n)], patient_id=patients, case_id=[f'C{p}' for p in patients],
                             magnification=40, tumor_type='A', label='benign'))[list(META_COLS)]

def test_confidence_is_the_probability_of_the_predicted_class():
    "P(malignant) 0.2: predicted benign with confidence 0.8, in the images table and in the patient table"
    preds = predictions_table(_meta(3, ['P1', 'P1', 'P2']), [[0.8, 0.2], [0.8, 0.2], [0.3, 0.7]], ['benign', 'malignant'])
    assert list(preds.columns) == [*META_COLS, 'predicted', 'confidence', 'p_benign', 'p_malignant']
    assert preds.predicted.tolist() == ['benign', 'benign', 'malignant']
    assert preds.confidence.tolist() == pytest.approx([0.8, 0.8, 0.7])
    assert preds.p_malignant.tolist() == pytest.approx([0.2, 0.2, 0.7])  # the malignant score stays in its own column
    ps = patient_scores(preds)
    assert ps.predicted.tolist() == ['benign', 'malignant']
    assert ps.confidence.tolist() == pytest.approx([0.8, 0.7]) and ps.p_malignant.tolist() == pytest.approx([0.2, 0.7])
    assert not {'prediction', 'probability'} & (set(preds.columns) | set(ps.columns))

def test_roc_reads_p_malignant_not_confidence():
    "Scores 0.2 (benign) and 0.7 (malignant) rank perfectly; their confidences (0.8 and 0.7) would rank them the wrong way"
    preds = predictions_table(_meta(2, ['P1', 'P2']), [[0.8, 0.2], [0.3, 0.7]], ['benign', 'malignant']).assign(label=['benign', 'malignant'])
    assert roc_auc(preds) == 1 and roc_auc(patient_scores(preds)) == 1
    assert weighted_auc(preds.p_malignant, preds.label == 'malignant', np.ones((1, 2)))[0] == 1

def test_report_csv_columns(tmp_path):
    preds = random_binary(12)
    out = write_report(preds, evaluation_report(preds, n_boot=0, progress=False), tmp_path/'r')
    cols = pd.read_csv(out/'predictions.csv').columns.tolist()
    assert cols[0] == 'path' and cols[-3:] == ['confidence', 'p_benign', 'p_malignant'] and cols[-4] == 'predicted'

# ---------------------------------------------------------------- a report is written whole or not at all

@pytest.fixture
def small_report():
    preds = random_binary(12)
    return preds, evaluation_report(preds, n_boot=20, progress=False)

def _left(folder): return sorted(p.name for p in folder.iterdir())

@pytest.mark.skipif(os.geteuid() == 0, reason='root ignores file permissions')
def test_report_into_read_only_folder(small_report, tmp_path):
    ro = tmp_path/'ro'
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(UserError) as e: write_report(*small_report, ro/'evaluation')
        assert str(ro/'evaluation') in str(e.value) and 'Permission denied' in str(e.value)
        assert _left(ro) == []
    finally: ro.chmod(0o755)

def test_report_permission_denied_simulated(small_report, tmp_path, monkeypatch):
    "The same as a read-only folder, also as root: creating the temporary folder is refused"
    mkdir = Path.mkdir
    def refuse(self, *a, **k):
        if self.parent == tmp_path/'ro': raise PermissionError(13, 'Permission denied', str(self))
        return mkdir(self, *a, **k)
    (tmp_path/'ro').mkdir()
    monkeypatch.setattr(Path, 'mkdir', refuse)
    with pytest.raises(UserError) as e: write_report(*small_report, tmp_path/'ro'/'evaluation')
    assert str(e.value) == f"{tmp_path/'ro'/'evaluation'}: cannot write the report: Permission denied; nothing was written"
    assert _left(tmp_path/'ro') == []

@pytest.mark.parametrize('where', ['metrics.json', 'by_magnification.png', 'rename'])
@pytest.mark.parametrize('exists', [False, True])
def test_report_disk_full_midway_leaves_nothing(small_report, tmp_path, monkeypatch, where, exists):
    "A full disk after some files (or at the final rename): one UserError naming the folder and the cause; no partial folder"
    out = tmp_path/'runs'/'evaluation'
    if exists: out.mkdir(parents=True)  # an empty folder given as `out` stays as it was
    full = OSError(28, 'No space left on device')
    if where == 'metrics.json':
        def write_text(self, *a, **k): raise OSError(28, 'No space left on device', str(self))
        monkeypatch.setattr(Path, 'write_text', write_text)
    elif where == 'rename':
        def replace(*a): raise full
        monkeypatch.setattr(evaluate_mod.os, 'replace', replace)
    else:
        save = evaluate_mod._save
        def _save(fig, fn, note=None):
            if fn.name == where: plt.close(fig); raise full
            save(fig, fn, note)
        monkeypatch.setattr(evaluate_mod, '_save', _save)
    with pytest.raises(UserError) as e: write_report(*small_report, out)
    msg = str(e.value)
    assert msg.startswith(f'{out}: ') and 'No space left on device' in msg and '\n' not in msg, msg
    if where == 'metrics.json': assert str(out/'metrics.json') in msg and '.partial' not in msg
    assert _left(tmp_path) == (['runs'] if exists else [])  # the `runs` folder it made is gone too
    if exists: assert _left(tmp_path/'runs') == ['evaluation'] and _left(out) == []

def test_report_interrupted_leaves_nothing(small_report, tmp_path, monkeypatch):
    "Ctrl-C while writing: the KeyboardInterrupt goes on, the temporary folder is gone"
    def interrupt(*a, **k): raise KeyboardInterrupt
    monkeypatch.setattr(evaluate_mod, 'plot_roc', interrupt)
    with pytest.raises(KeyboardInterrupt): write_report(*small_report, tmp_path/'evaluation')
    assert _left(tmp_path) == []

def test_report_into_empty_folder_and_extra_files(small_report, tmp_path):
    "An existing empty folder is filled, keeping the permissions of a new folder; `extra` files join the report"
    (tmp_path/'plain').mkdir()
    out = tmp_path/'evaluation'
    out.mkdir(mode=0o700)
    skipped = pd.DataFrame(dict(path=['a.png'], error=['not an image']))
    write_report(*small_report, out, extra={'skipped.csv': skipped})
    assert _left(out) == sorted([*REPORT_FILES, 'skipped.csv']) and _left(tmp_path) == ['evaluation', 'plain']
    assert out.stat().st_mode & 0o777 == (tmp_path/'plain').stat().st_mode & 0o777
    assert pd.read_csv(out/'skipped.csv').equals(skipped)
    with pytest.raises(UserError, match='not empty'): write_report(*small_report, out)
    (tmp_path/'file').write_text('x')
    with pytest.raises(UserError, match='not a folder'): write_report(*small_report, tmp_path/'file')
    with pytest.raises(UserError, match='Not a directory'): write_report(*small_report, tmp_path/'file'/'evaluation')
    assert _left(tmp_path) == ['evaluation', 'file', 'plain']

# ---------------------------------------------------------------- with a tiny trained model

@pytest.fixture(scope='module')
def tiny(synth_root):
    "A resnet18 trained from scratch for one epoch on 64 px synthetic images, and its split table"
    from breakhis_clf.datablock import breakhis_dls
    from breakhis_clf.learner import breakhis_learner
    df = patient_split(breakhis_df(synth_root), valid_pct=0.5, seed=1)
    learn = breakhis_learner(breakhis_dls(df, size=64, bs=16, num_workers=0, seed=0), 'resnet18', pretrained=False, seed=0)
    with learn.no_bar(): learn.fit_one_cycle(1, 1e-3)
    return learn, df

def test_predictions_df(tiny):
    learn, df = tiny
    preds = predictions_df(learn, df)
    assert len(preds) == df.is_valid.sum()
    assert set(preds.path) == set(df.path[df.is_valid])
    assert preds[['p_benign', 'p_malignant']].sum(axis=1).to_numpy() == pytest.approx(1, abs=1e-5)
    assert (preds.confidence == preds[['p_benign', 'p_malignant']].max(axis=1)).all()
    assert (preds.predicted == np.where(preds.p_malignant > preds.p_benign, 'malignant', 'benign')).all()
    from_dl = predictions_df(learn, learn.dls.valid)
    assert from_dl.path.tolist() == preds.path.tolist()
    assert from_dl.p_malignant.to_numpy() == pytest.approx(preds.p_malignant.to_numpy(), abs=1e-5)
    with pytest.raises(UserError, match='is_valid=True'): predictions_df(learn, df.drop(columns='subset').assign(is_valid=False))
    with pytest.raises(UserError, match='no test rows'): predictions_df(learn, df, subset='test')

def test_gradcam_shape_not_constant_and_drawn(tiny):
    learn, df = tiny
    preds = predictions_df(learn, df)
    # the map of a barely trained model can be all zero (no positive evidence): look at its 5 most confident calls
    confident = preds.path[preds[['p_benign', 'p_malignant']].max(axis=1).nlargest(5).index]
    heats = {p: gradcam(learn, p) for p in confident}
    img = max(heats, key=lambda p: heats[p].std())
    heat = heats[img]
    _, shown = model_input(learn, img)
    assert heat.shape == shown.shape[:2] == (64, 64)
    assert all(h.min() >= 0 and h.max() <= 1 for h in heats.values())
    assert heat.std() > 0.05  # not constant
    assert gradcam(learn, img, target='benign').shape == heat.shape
    ax = show_gradcam(learn, img, target='malignant', title='x')
    assert len(ax.images) == 2  # the picture and the heatmap over it
    ax.figure.canvas.draw()
    plt.close('all')
    with pytest.raises(UserError, match='not one of'): gradcam(learn, img, target='normal')
    fig = plot_gradcams(learn, preds, n=2)
    assert 1 <= len(fig.axes) // 2 <= 2  # a row of correct and (when there are any) a row of wrong calls
    plt.close(fig)

def test_gradcam_pil_image_equals_file(tiny):
    "A PIL image (even one opened lazily) gives the map of its file, and is left as it was"
    learn, df = tiny
    p = df.path[df.is_valid].iloc[0]
    im = Image.open(p)
    cls = type(im)
    np.testing.assert_allclose(gradcam(learn, im), gradcam(learn, p), atol=1e-5)
    assert type(im) is cls

def test_cam_layer_efficientnet_is_bn2_and_maps_are_not_degenerate(synth_root):
    "For the pretrained EfficientNet-Lite0 Grad-CAM explains the body's last layer (`bn2`, 1280 channels), with real contrast"
    from breakhis_clf.datablock import breakhis_dls
    from breakhis_clf.learner import breakhis_learner
    df = patient_split(breakhis_df(synth_root), valid_pct=0.5, seed=1)
    learn = breakhis_learner(breakhis_dls(df, size=64, bs=8, num_workers=0), 'efficientnet_lite0', seed=0)
    layer = cam_layer(learn.model)
    assert layer is learn.model[0][-1] and type(layer).__name__ == 'BatchNormAct2d' and layer.num_features == 1280
    heats = [gradcam(learn, p) for p in df.path[df.is_valid].iloc[:4]]
    assert all(h.shape == (64, 64) and h.min() >= 0 and h.max() <= 1 for h in heats)
    assert max(h.std() for h in heats) > 0.05

def test_evaluate_on_real_sample_writes_every_file(tiny, sample_root, tmp_path):
    learn, _ = tiny
    real = breakhis_df(sample_root)
    out = tmp_path/'evaluation'
    rep = evaluate(learn, real, out=out, n_boot=20, progress=False)
    assert sorted(o.name for o in out.iterdir()) == sorted(REPORT_FILES)
    for f in REPORT_FILES: assert (out/f).stat().st_size > 0
    for f in REPORT_FILES:
        if f.endswith('.png'): Image.open(out/f).verify()
    assert rep['n_images'] == len(real) and rep['n_patients'] == real.patient_id.nunique()
    assert json.loads((out/'metrics.json').read_text()) == rep
    assert len(pd.read_csv(out/'predictions.csv')) == len(real)
    assert '## By magnification' in (out/'summary.md').read_text()
    with pytest.raises(UserError, match='not empty'): evaluate(learn, real, out=out, n_boot=0)

@pytest.fixture(scope='module')
def tiny_run(tiny, tmp_path_factory):
    "The tiny learner saved as a run folder, as `train_run` writes it"
    from breakhis_clf.inference import save_model
    learn, df = tiny
    run = save_model(learn, tmp_path_factory.mktemp('run')/'run')
    df[['path', 'patient_id', 'label', 'tumor_type', 'magnification', 'is_valid']].to_csv(run/'split.csv', index=False)
    return run

def test_evaluate_run_never_overwrites(tiny, tiny_run, tmp_path):
    run = tiny_run
    r1 = evaluate_run(run, out=tmp_path/'evaluation', n_boot=10, progress=False)
    r2 = evaluate_run(run, n_boot=10, progress=False)
    r3 = evaluate_run(run, n_boot=10, progress=False)
    assert Path(r1['out']) == tmp_path/'evaluation'
    assert Path(r2['out']) == run/'evaluation' and Path(r3['out']) == run/'evaluation-2'
    assert r1['n_images'] == tiny[1].is_valid.sum() and r1['skipped'] == []
    with pytest.raises(UserError, match='run folder not found'): evaluate_run(tmp_path/'nothing')
    with pytest.raises(UserError, match='model.json: missing'): evaluate_run(tmp_path)
    with pytest.raises(UserError, match='not empty'): evaluate_run(run, out=tmp_path/'evaluation')

def test_evaluate_run_safe_equals_evaluate_with_learner(tiny, tiny_run, tmp_path, monkeypatch):
    "The safe path (load_model + predict, nothing unpickled) gives the numbers `evaluate(learn, ...)` gives"
    import pickle, torch
    learn, df = tiny
    ref = evaluate(learn, df[df.is_valid], out=tmp_path/'ref', n_boot=200, progress=False)
    def boom(*a, **k): raise AssertionError('unpickling in safe mode')
    for mod, name in [(pickle, 'load'), (pickle, 'loads'), (torch, 'load')]: monkeypatch.setattr(mod, name, boom)
    got = evaluate_run(tiny_run, out=tmp_path/'safe', n_boot=200, progress=False)
    monkeypatch.undo()
    a, b = pd.read_csv(tmp_path/'ref'/'predictions.csv'), pd.read_csv(tmp_path/'safe'/'predictions.csv')
    assert list(a.columns) == list(b.columns) and a.path.tolist() == b.path.tolist()
    assert a[['patient_id', 'magnification', 'tumor_type', 'label', 'predicted']].equals(
           b[['patient_id', 'magnification', 'tumor_type', 'label', 'predicted']])
    np.testing.assert_allclose(b[['confidence', 'p_benign', 'p_malignant']], a[['confidence', 'p_benign', 'p_malignant']], atol=1e-5)
    for k in ('n_images', 'n_patients', 'headline', 'image', 'patient', 'by_magnification', 'by_tumor_type', 'ci', 'ci_by_magnification'):
        assert got[k] == ref[k], k

@pytest.mark.filterwarnings("ignore:load_learner. uses Python's insecure pickle")  # fastai's own warning, beside ours
def test_evaluate_run_unsafe_uses_the_pickle(tiny_run, tmp_path):
    with pytest.warns(UserWarning, match='only load model.pkl files you trust'):
        unsafe = evaluate_run(tiny_run, out=tmp_path/'u', n_boot=20, progress=False, safe=False)
    assert unsafe['headline'] == evaluate_run(tiny_run, out=tmp_path/'s', n_boot=20, progress=False)['headline']

def test_evaluate_run_skips_unreadable_images(tiny, tiny_run, tmp_path):
    import shutil
    df = tiny[1]
    data = tmp_path/'data'
    data.mkdir()
    for p in df.path[df.is_valid]: shutil.copy(p, data)
    files = sorted(data.glob('*.png'))
    files[0].write_text('not an image'); files[1].write_bytes(b'')
    with pytest.warns(UserWarning, match='2 image.s. could not be read') as ws:
        rep = evaluate_run(tiny_run, data=data, out=tmp_path/'r', n_boot=0, progress=False)
    msg = ' '.join(str(w.message) for w in ws)
    assert str(files[0]) in msg and str(files[1]) in msg and 'not an image' in msg
    assert rep['n_images'] == len(files) - 2
    assert sorted(pd.read_csv(tmp_path/'r'/'skipped.csv').path) == sorted(map(str, files[:2]))
    for f in files: f.write_bytes(b'')
    with pytest.raises(UserError, match='none of the .* images could be read'):
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            evaluate_run(tiny_run, data=data, out=tmp_path/'r2', n_boot=0, progress=False)

def test_multiclass_model(synth_root):
    from breakhis_clf.datablock import breakhis_dls
    from breakhis_clf.learner import breakhis_learner
    df = patient_split(breakhis_df(synth_root), valid_pct=0.5, seed=1, by='tumor_type')
    learn = breakhis_learner(breakhis_dls(df, size=32, bs=16, target='tumor_type', num_workers=0, seed=0),
                             'resnet18', pretrained=False, seed=0)
    with learn.no_bar(): learn.fit(1, 1e-3)
    preds = predictions_df(learn, df)
    assert truth_col(preds) == 'tumor_type' and len(class_names(preds)) == 8
    assert (preds.confidence == preds[[f'p_{c}' for c in class_names(preds)]].max(axis=1)).all()
    rep = evaluation_report(preds, n_boot=10, progress=False)
    assert rep['positive_class'] is None and len(rep['image']['confusion_matrix']) == 8
