"The real BreakHis protocol (issue 10): a patient with two cases, the official folds, a held-out test split, eight learnable classes."
import json, warnings
from pathlib import Path
import numpy as np, pandas as pd, pytest
from PIL import Image
from breakhis_clf.data import *
from breakhis_clf.evaluate import patient_scores, predictions_table, evaluation_report, summary_markdown, SMALL_SAMPLE
from breakhis_clf.cli import make_split, train_run

TWO = '14-13412'


@pytest.fixture(scope='module')
def two_case_tree(tmp_path_factory, synth_root):
    "A BreakHis tree where patient 14-13412 has a ductal (DC) and a lobular (LC) case, as in the real dataset"
    root = tmp_path_factory.mktemp('two_case')/'BreaKHis_v1'
    src = breakhis_df(synth_root)
    tile = Image.open(src.path[0])
    for _, r in src.iterrows():  # the synthetic set, copied with its own names
        dest = root/Path(r.path).relative_to(synth_root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(Path(r.path).read_bytes())
    for tt in ('DC', 'LC'):
        for mag in (40, 100):
            for seq in (1, 2):
                r = BreakHisName('malignant', tt, TUMOR_TYPES[tt], TWO, mag, seq)
                (root/breakhis_relpath(r)).parent.mkdir(parents=True, exist_ok=True)
                tile.save(root/breakhis_relpath(r))
    return root


def test_one_patient_two_cases(two_case_tree):
    df = breakhis_df(two_case_tree)
    two = df[df.patient_id == TWO]
    assert sorted(two.case_id.unique()) == [f'SOB_M_DC_{TWO}', f'SOB_M_LC_{TWO}']
    assert df.case_id.nunique() == df.patient_id.nunique() + 1
    assert parse_name(f'SOB_M_LC-{TWO}-100-001.png').case_id == f'SOB_M_LC_{TWO}'


@pytest.mark.parametrize('kw', [dict(), dict(test_pct=0.2), dict(by='tumor_type'), dict(seed=3, test_pct=0.25)])
def test_every_package_split_keeps_the_person_together(two_case_tree, kw):
    df = breakhis_df(two_case_tree)
    for seed in range(10):
        s = patient_split(df, **{'seed': seed, **kw})
        assert leaked_patients(s) == []
        assert s[s.patient_id == TWO].subset.nunique() == 1
    for t in spanhol_splits(df, seed=1): assert t[t.patient_id == TWO].is_valid.nunique() == 1


def _official_style_folds(df, path):
    "A Folds.csv in the Kaggle format whose fold 1 puts 14-13412's LC case in test and its DC case in train, like dsfold1.txt"
    pats = sorted(df.patient_id.unique())
    test_pats = {p for i, p in enumerate(pats) if i % 3 == 0} - {TWO}
    grp = np.where(df.patient_id.isin(test_pats) | (df.case_id == f'SOB_M_LC_{TWO}'), 'test', 'train')
    pd.DataFrame(dict(fold=1, mag=df.magnification, grp=grp, filename=[f'BreaKHis_v1/x/{Path(p).name}' for p in df.path])
                ).to_csv(path, index=False)
    return path


def test_official_folds_are_reproduced_with_a_warning(two_case_tree, tmp_path):
    df = breakhis_df(two_case_tree)
    folds = read_folds(_official_style_folds(df, two_case_tree.parent/'Folds.csv'))  # where the CLI looks
    with pytest.warns(UserWarning, match=f'as published.*{TWO}') as rec:
        fs = folds_split(df, folds, fold=1)
    assert len(rec) == 1 and f'SOB_M_LC_{TWO} in test' in str(rec[0].message)
    assert fs.set_index('case_id').subset.groupby(level=0).first()[[f'SOB_M_DC_{TWO}', f'SOB_M_LC_{TWO}']].tolist() == ['train', 'test']
    # the CLI's split: the fold as published, validation patients from its train side, one logged warning line
    log = []
    res = make_split(df, 'folds', two_case_tree, fold=1, log=log.append)
    assert len(log) == 1 and TWO in log[0] and log[0].startswith('Warning:')
    assert (res.subset == 'test').tolist() == (fs.subset == 'test').tolist()
    assert TWO not in set(res.patient_id[res.subset == 'valid'])
    assert res.is_valid.any() and leaked_patients(res.drop(index=res.index[res.patient_id == TWO])) == []


def test_test_split_is_disjoint_stratified_reproducible(synth_root):
    df = breakhis_df(synth_root)
    a, b = patient_split(df, test_pct=0.25, seed=5), patient_split(df, test_pct=0.25, seed=5)
    assert a.subset.tolist() == b.subset.tolist()
    assert any(patient_split(df, test_pct=0.25, seed=s).subset.tolist() != a.subset.tolist() for s in range(6, 10))
    sets = {s: set(a.patient_id[a.subset == s]) for s in ('train', 'valid', 'test')}
    assert not (sets['train'] & sets['valid'] or sets['train'] & sets['test'] or sets['valid'] & sets['test'])
    for s in sets: assert set(a.label[a.subset == s]) == set(LABELS)  # stratified: both classes everywhere
    assert a.groupby('label').patient_id.nunique().to_dict() == {'benign': 8, 'malignant': 8}
    assert (a[a.subset == 'test'].groupby('label').patient_id.nunique() == 2).all()  # 25% of 8 per class
    with pytest.raises(UserError, match='test_pct'): patient_split(df, valid_pct=0.5, test_pct=0.5)


def test_eight_class_patient_scores_are_per_case():
    "A perfect classifier on a patient with two tumour types: one row per case, no error"
    rows = [dict(path=f'{c}{i}.png', patient_id=p, case_id=f'SOB_M_{c}_{p}', magnification=40, tumor_type=c, label='malignant')
            for p, cs in [(TWO, 'DC LC'), ('1', 'DC'), ('2', 'MC')] for c in cs.split() for i in range(2)]
    df = pd.DataFrame(rows)
    classes = ['DC', 'LC', 'MC']
    probs = np.eye(3)[[classes.index(t) for t in df.tumor_type]]
    preds = predictions_table(df, probs, classes)
    ps = patient_scores(preds)
    assert list(ps.index) == sorted(df.case_id.unique()) and (ps.predicted == ps.tumor_type).all()
    assert (ps.confidence == 1).all()  # a perfect classifier: the predicted type's mean probability is 1
    assert ps.loc[f'SOB_M_LC_{TWO}', 'patient_id'] == TWO
    rep = evaluation_report(preds, n_boot=50, progress=False)
    assert (rep['n_patients'], rep['n_cases'], rep['score_unit']) == (3, 4, 'case_id')
    assert rep['headline']['patient_accuracy'] == 1.0 and rep['small_sample']
    assert 'Only 3 patients were evaluated' in summary_markdown(rep)


def test_small_sample_is_said_only_for_small_sets():
    rng = np.random.default_rng(0)
    def rep(n):
        df = pd.DataFrame([dict(path=f'{i}-{k}.png', patient_id=f'P{i}', case_id=f'C{i}', magnification=40, tumor_type='A',
                                label='benign' if i % 2 else 'malignant') for i in range(n) for k in range(3)])
        p = np.where(df.label == 'malignant', 0.8, 0.2) + rng.normal(0, 0.1, len(df)).clip(-0.15, 0.15)
        return evaluation_report(predictions_table(df, np.stack([1-p, p], 1), ['benign', 'malignant']), n_boot=20, progress=False)
    small, big = rep(SMALL_SAMPLE - 1), rep(SMALL_SAMPLE)
    assert small['small_sample'] and not big['small_sample']
    assert 'Only' in summary_markdown(small) and 'Only' not in summary_markdown(big)


@pytest.fixture(scope='module')
def eight_class_data(tmp_path_factory):
    "64 synthetic cases (8 per tumour type) with a patient who has a ductal and a lobular case"
    return make_synthetic_breakhis(tmp_path_factory.mktemp('eight'), n_patients=64, images_per_patient=1, size=(350, 230),
                                   two_case_patient=True, progress=False)


def test_eight_class_run_beats_chance_and_reports_on_test(eight_class_data, tmp_path):
    "The CLI's eight-class run, end to end on CPU: split by tumour type, report on the test patients, per case"
    log = []
    run = train_run(eight_class_data, arch='efficientnet_lite0', size=96, bs=16, freeze_epochs=2, epochs=2, lr=5e-3,
                    target='tumor_type', test_pct=0.25, valid_pct=0.25, seed=0, out=tmp_path/'runs', num_workers=0, log=log.append)
    split = pd.read_csv(run/'split.csv', dtype={'patient_id': str})
    assert leaked_patients(split) == [] and split.groupby('patient_id').subset.nunique().max() == 1
    two = split[split.groupby('patient_id').case_id.transform('nunique') > 1]
    assert two.case_id.nunique() == 2 and two.subset.nunique() == 1  # the two-case patient, on one side
    m = json.loads((run/'evaluation'/'metrics.json').read_text())
    test = split[split.subset == 'test']
    assert m['subset'] == 'test' and m['n_images'] == len(test) and m['n_patients'] == test.patient_id.nunique()
    assert m['n_cases'] == test.case_id.nunique() and m['score_unit'] == 'case_id'
    assert m['trained_on']['n_patients'] == split[split.subset == 'train'].patient_id.nunique() and m['trained_on']['synthetic']
    assert m['headline']['image_accuracy'] > 0.4, m['headline']  # chance is 1/8 = 0.125
    assert any(l.startswith('Evaluation on the test patients') for l in log)
    summary = (run/'evaluation'/'summary.md').read_text()
    assert '**test** patients' in summary and 'SYNTHETIC' in summary
    meta = json.loads((run/'model.json').read_text())
    assert meta['trained_on'] == m['trained_on']
    # `breakhis-clf evaluate` on the run evaluates the same test patients, and says so
    from breakhis_clf.inference import evaluate_run
    again = evaluate_run(run, n_boot=10, progress=False)
    assert again['subset'] == 'test' and again['n_images'] == len(test) and again['trained_on'] == m['trained_on']
    assert again['headline']['image_accuracy'] == pytest.approx(m['headline']['image_accuracy'], abs=1/len(test))
