"Data layer: file names, the real sample, patient-wise splits, the synthetic set, bad inputs."
from pathlib import Path
import numpy as np, pandas as pd, pytest
from PIL import Image
from breakhis_clf.data import *
from breakhis_clf.datablock import breakhis_dls, preresize, RGBImage


def test_sample_parses_and_agrees_with_folders(sample_root):
    files = sorted(sample_root.rglob('*.png'))
    assert len(files) == 23
    for f in files:
        r = parse_name(f)
        parts = f.parts
        assert r.label in parts and r.tumor_name in parts and f"{r.magnification}X" in parts, f
    df = breakhis_df(sample_root)
    assert len(df) == 23
    assert (df.label.value_counts().to_dict()) == {'benign': 14, 'malignant': 9}
    # one patient per patient folder (the sample's README says 19 patients; its folders hold 17)
    assert df.patient_id.nunique() == len({f.parent.parent.name for f in files}) == 17
    assert set(df.magnification) == set(MAGNIFICATIONS)
    for p, lbl, tn in zip(df.path, df.label, df.tumor_name):
        assert f'/{lbl}/' in p and f'/{tn}/' in p


@pytest.mark.parametrize('sub', ['', 'BreaKHis_v1', 'BreaKHis_v1/histology_slides/breast', 'BreaKHis_v1/histology_slides/breast/benign'])
def test_sample_from_parent_or_child(sample_root, sub):
    df = breakhis_df(sample_root/sub)
    assert len(df) == (14 if sub.endswith('benign') else 23)


def test_sample_images_are_real_breakhis_pngs(sample_root):
    df = breakhis_df(sample_root)
    assert check_images(df.path, progress=False).empty


def test_magnification_filter(sample_root):
    df = breakhis_df(sample_root, magnifications=[40, 400])
    assert set(df.magnification) <= {40, 400} and len(df) > 0
    with pytest.raises(UserError, match='magnification 50'): breakhis_df(sample_root, magnifications=50)


def test_flat_folder(tmp_path, synth_root):
    src = breakhis_df(synth_root).path[:5]
    for p in src: (tmp_path/Path(p).name).write_bytes(Path(p).read_bytes())
    assert len(breakhis_df(tmp_path)) == 5


def _shapes():
    "Several data shapes: patient counts, imbalance, images per patient"
    rng = np.random.default_rng(0)
    for n_ben, n_mal in [(2, 2), (3, 9), (24, 58), (5, 5), (2, 30)]:
        rows = []
        for i in range(n_ben + n_mal):
            lbl = 'benign' if i < n_ben else 'malignant'
            for s in range(int(rng.integers(1, 40))): rows.append(dict(path=f'{i}-{s}.png', label=lbl, patient_id=f'p{i}'))
        yield pd.DataFrame(rows)


@pytest.mark.parametrize('df', list(_shapes()))
def test_no_patient_on_both_sides(df):
    for seed in range(40):
        for d in [patient_split(df, seed=seed), patient_split(df, valid_pct=0.5, seed=seed), *spanhol_splits(df, seed=seed)]:
            assert leaked_patients(d) == []
            sides = d.groupby('patient_id').is_valid.nunique()
            assert (sides == 1).all()
            for side in (True, False): assert set(d[d.is_valid == side].label) == {'benign', 'malignant'}


def test_split_is_reproducible_and_seed_dependent():
    df = list(_shapes())[2]
    a, b = patient_split(df, seed=7), patient_split(df, seed=7)
    assert a.is_valid.tolist() == b.is_valid.tolist()
    assert any(patient_split(df, seed=s).is_valid.tolist() != a.is_valid.tolist() for s in range(8, 12))
    # 30% of each class's patients are held out (rounded)
    va = a[a.is_valid].groupby('label').patient_id.nunique().to_dict()
    assert va == {'benign': round(0.3*24), 'malignant': round(0.3*58)}


def test_spanhol_trials_differ_and_hold_out_30pct():
    df = list(_shapes())[2]
    trials = spanhol_splits(df, n=5)
    assert len(trials) == 5
    assert len({tuple(t.is_valid) for t in trials}) == 5
    for t in trials:
        frac = t[t.is_valid].patient_id.nunique() / t.patient_id.nunique()
        assert 0.25 < frac < 0.35


def test_read_folds(tmp_path, synth_root):
    df = breakhis_df(synth_root)
    ps = patient_split(df, seed=1)
    csv = tmp_path/'Folds.csv'
    pd.DataFrame(dict(fold=2, mag=df.magnification, grp=np.where(ps.is_valid, 'test', 'train'),
                      filename=[str(Path(p).relative_to(synth_root.parent)) for p in df.path])).to_csv(csv, index=False)
    fs = folds_split(df, read_folds(csv), fold=2)
    assert fs.subset.tolist() == np.where(ps.is_valid, 'test', 'train').tolist()  # the fold's test group, as published
    assert not fs.is_valid.any() and leaked_patients(fs) == []
    (tmp_path/'bad.csv').write_text('a,b\n1,2\n')
    with pytest.raises(UserError, match='bad.csv'): read_folds(tmp_path/'bad.csv')


def test_synthetic_round_trip_to_a_batch(synth_root):
    df = breakhis_df(synth_root)
    assert len(df) == 16*2*4 and df.patient_id.nunique() == 16
    assert is_synthetic(synth_root)
    dls = breakhis_dls(patient_split(df), size=64, bs=8, num_workers=0)
    xb, yb = dls.one_batch()
    assert tuple(xb.shape) == (8, 3, 64, 64)
    import torch  # the targets are the table's labels, in the validation order
    assert torch.cat([y for _, y in dls.valid]).tolist() == [dls.vocab.o2i[l] for l in dls.valid.items.label]
    assert set(dls.valid.items.label) == {'benign', 'malignant'}


def test_synthetic_is_reproducible(tmp_path):
    a = make_synthetic_breakhis(tmp_path/'a', n_patients=4, images_per_patient=1, magnifications=[40], size=(70, 46), progress=False)
    b = make_synthetic_breakhis(tmp_path/'b', n_patients=4, images_per_patient=1, magnifications=[40], size=(70, 46), progress=False)
    fa, fb = sorted(a.rglob('*.png')), sorted(b.rglob('*.png'))
    assert [f.name for f in fa] == [f.name for f in fb]
    assert all(np.array_equal(np.asarray(Image.open(x)), np.asarray(Image.open(y))) for x, y in zip(fa, fb))


def test_synthetic_never_overwrites(tmp_path):
    make_synthetic_breakhis(tmp_path, n_patients=4, images_per_patient=1, magnifications=[40], size=(70, 46), progress=False)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob('*.png')}
    with pytest.raises(UserError, match='already exists'):
        make_synthetic_breakhis(tmp_path, n_patients=4, images_per_patient=1, size=(70, 46), progress=False)
    assert before == {p: p.stat().st_mtime_ns for p in tmp_path.rglob('*.png')}


@pytest.mark.parametrize('name', ['IMG_0001.png', 'SOB_B_A-14-22549AB-45-001.png', 'SOB_M_A-14-22549AB-40-001.png',
                                  'SOB_B_ZZ-14-22549AB-40-001.png', 'SOB_B_A_14-22549AB-40-001.png'])
def test_non_breakhis_name(name):
    with pytest.raises(ValueError, match=name): parse_name(name)


def test_non_breakhis_files_warned_not_mixed_in(tmp_path, synth_root):
    p = breakhis_df(synth_root).path[0]
    (tmp_path/Path(p).name).write_bytes(Path(p).read_bytes())
    (tmp_path/'scan_0001.png').write_bytes(Path(p).read_bytes())
    (tmp_path/'notes.txt').write_text('hello')
    with pytest.warns(UserWarning, match='scan_0001.png'): df = breakhis_df(tmp_path)
    assert len(df) == 1


@pytest.mark.parametrize('folder', ['malignant', 'ductal_carcinoma', '100X', 'SOB_B_F_14-99999'])
def test_folder_name_mismatch(tmp_path, folder):
    f = tmp_path/folder/'SOB_B_A-14-22549AB-40-001.png'
    f.parent.mkdir()
    Image.new('RGB', (8, 8)).save(f)
    with pytest.raises(UserError, match='SOB_B_A-14-22549AB-40-001.png'): breakhis_df(tmp_path)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope'): breakhis_df(tmp_path/'nope')
    with pytest.raises(UserError, match='no BreakHis images'): breakhis_df(tmp_path)


def test_truncated_png_is_named(tmp_path, synth_root):
    good = Path(breakhis_df(synth_root).path[0])
    bad = tmp_path/good.name
    bad.write_bytes(good.read_bytes()[:len(good.read_bytes())//2])
    with pytest.raises(BadImageError, match=f'{good.name}: truncated'): load_rgb(bad)
    with pytest.raises(BadImageError, match=good.name): RGBImage.create(bad)
    probs = check_images([good, bad], size=None, progress=False)
    assert probs.path.tolist() == [str(bad)] and 'truncated' in probs.problem[0]


def test_offline_download_message(tmp_path, monkeypatch):
    import socket
    def refuse(*a, **k): raise OSError('network unreachable')
    monkeypatch.setattr(socket, 'create_connection', refuse)
    with pytest.raises(UserError, match=f'put the BreaKHis_v1 folder in {tmp_path}'): get_breakhis(tmp_path)
    with pytest.raises(UserError, match='cannot be reached'): get_breakhis(tmp_path, source='ufpr')
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_find_breakhis_looks_under_kaggle_input(tmp_path, monkeypatch):
    "With no folder given: `default_data_path()` first, then the search roots (Kaggle mounts datasets in /kaggle/input)"
    assert Path('/kaggle/input') in SEARCH_ROOTS
    home = tmp_path/'home'
    monkeypatch.setenv('BREAKHIS_DIR', str(home))  # an empty default place
    kaggle = tmp_path/'kaggle-input'
    (kaggle/'breakhis'/'BreaKHis_v1'/'BreaKHis_v1').mkdir(parents=True)  # as Kaggle mounts ambarish/breakhis
    assert find_breakhis(roots=[tmp_path/'absent', kaggle]) == kaggle/'breakhis'/'BreaKHis_v1'
    assert find_breakhis(roots=[]) is None
    assert find_breakhis(home, roots=[kaggle]) is None  # a folder that is given is the only place looked in
    (home/'BreaKHis_v1').mkdir(parents=True)
    assert find_breakhis(roots=[kaggle]) == home/'BreaKHis_v1'  # the default place comes first


def test_rel_paths_for_display(synth_root):
    df = breakhis_df(synth_root)
    shown = rel_paths(df, synth_root)
    assert all(p.startswith('histology_slides/breast/') for p in shown.path)
    assert shown.drop(columns='path').equals(df.drop(columns='path'))
    assert all(Path(p).is_absolute() for p in df.path)  # the table itself is unchanged


def test_preresize_never_writes_into_source(tmp_path, synth_root):
    before = sorted((p, p.stat().st_size) for p in synth_root.rglob('*'))
    out = preresize(synth_root, tmp_path/'small', max_size=60, n_workers=1)
    assert sorted((p, p.stat().st_size) for p in synth_root.rglob('*')) == before
    df = breakhis_df(out)
    assert len(df) == len(breakhis_df(synth_root))
    assert max(Image.open(df.path[0]).size) == 60
    with pytest.raises(UserError): preresize(synth_root, synth_root/'x')


def test_stats_and_plot_from_the_package(synth_root):
    "`plot_stats` works for a programmer who imports the package (not only inside the notebook)"
    import matplotlib; matplotlib.use('Agg')
    df = breakhis_df(synth_root)
    st = dataset_stats(df)
    assert st['label'].images.sum() == len(df) and st['label'].patients.sum() == df.patient_id.nunique()
    fig = plot_stats(df)
    assert len(fig.axes) == 4 and sum(len(a.patches) for a in fig.axes[:3]) == 2 + 8 + 4
