"Saving, safe loading and prediction (`breakhis_clf.inference`), including every kind of bad input"
import json, pickle, shutil
from pathlib import Path

import numpy as np, pandas as pd, pytest, torch
from PIL import Image
from fastai.vision.core import TensorImage

from breakhis_clf.data import UserError, make_synthetic_breakhis, breakhis_df, patient_split
from breakhis_clf.datablock import breakhis_dls
from breakhis_clf.learner import breakhis_learner
from breakhis_clf.inference import (MODEL_FILES, FORMAT_VERSION, ModelError, BreakHisModel, save_model, load_model,
                                    class_probs, predict, predict_lines, predict_cmd)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "(learner, run folder, image files): a resnet18 trained for one epoch on tiny synthetic data, saved"
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp('inference')
    root = make_synthetic_breakhis(tmp/'data', n_patients=4, images_per_patient=2, magnifications=(40, 100),
                                   size=(96, 64), seed=1, progress=False)
    df = patient_split(breakhis_df(root), valid_pct=0.5, seed=0)
    learn = breakhis_learner(breakhis_dls(df, size=64, bs=4, num_workers=0, seed=0), arch='resnet18', pretrained=False)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    run = save_model(learn, tmp/'run')
    return learn, run, [Path(p) for p in df.path]

@pytest.fixture(scope='module')
def model(trained): return load_model(trained[1], device='cpu')

@pytest.fixture
def good(trained): return Image.open(trained[2][0]).convert('RGB')

def probs(df, model): return df[[f'p_{c}' for c in model.classes]].to_numpy()


# --- saving -------------------------------------------------------------------------------------

def test_save_writes_both_forms(trained):
    learn, run, _ = trained
    assert sorted(f.name for f in run.iterdir()) == sorted(MODEL_FILES)
    meta = json.loads((run/'model.json').read_text())
    assert meta['arch'] == 'resnet18' and meta['classes'] == list(learn.dls.vocab) and meta['n_out'] == 2
    assert meta['size'] == [64, 64] and meta['resize_method'] == 'crop' and meta['target'] == 'label'
    assert meta['format_version'] == FORMAT_VERSION
    np.testing.assert_allclose(meta['mean'], [0.485, 0.456, 0.406], atol=1e-6)

def test_save_refuses_unknown_validation_transform(trained, tmp_path):
    "A validation transform the safe form cannot replay must stop `save_model`, not be silently dropped"
    from fasttransform import Transform
    from fastai.vision.augment import Dihedral, Brightness
    learn = trained[0]
    before = list(learn.dls.valid.after_batch.fs)
    dls = learn.dls.new_empty()
    dls.valid.after_batch.add([Dihedral(), Brightness()])  # identity on validation batches: fine
    learn2 = breakhis_learner(dls, arch='resnet18', pretrained=False)
    assert save_model(learn2, tmp_path/'ok').exists()
    dls.valid.after_batch.add([Transform(lambda x: x * 2)])
    with pytest.raises(UserError, match='unsupported transform'): save_model(learn2, tmp_path/'bad')
    assert not (tmp_path/'bad').exists()
    assert list(learn.dls.valid.after_batch.fs) == before  # the shared learner is untouched

def test_save_refuses_to_overwrite(trained):
    learn, run, _ = trained
    before = {f: (run/f).read_bytes() for f in MODEL_FILES}
    with pytest.raises(UserError, match='refusing to overwrite'): save_model(learn, run)
    assert {f: (run/f).read_bytes() for f in MODEL_FILES} == before


# --- loading ------------------------------------------------------------------------------------

def test_safe_load_restores_weights(trained, model):
    learn = trained[0]
    ref = learn.model.state_dict()
    got = model.model.state_dict()
    assert ref.keys() == got.keys()
    for k in ref: assert torch.equal(ref[k].cpu(), got[k]), k
    assert model.classes == list(learn.dls.vocab)

def test_safe_load_never_unpickles(trained, tmp_path, monkeypatch):
    "A booby-trapped model.pkl is not touched, and neither pickle nor torch.load is called"
    run = tmp_path/'run'; shutil.copytree(trained[1], run)
    marker = tmp_path/'pwned'
    class Trap:
        def __reduce__(self): return (Path.touch, (marker,))
    (run/'model.pkl').write_bytes(pickle.dumps(Trap()))
    def boom(*a, **k): raise AssertionError('unpickling in safe mode')
    for mod, name in [(pickle, 'load'), (pickle, 'loads'), (torch, 'load')]: monkeypatch.setattr(mod, name, boom)
    m = load_model(run, device='cpu')
    assert isinstance(m, BreakHisModel) and not marker.exists()

def test_load_accepts_model_json_path(trained):
    assert load_model(trained[1]/'model.json', device='cpu').classes == ['benign', 'malignant']

def _assert_pickle_predicts_the_same(run, model, files):
    "Loading `run`'s pickle warns, and its predictions on `files` equal the safe `model`'s"
    with pytest.warns(UserWarning, match='only load model.pkl files you trust'):
        pickled = load_model(run, safe=False, device='cpu')
    np.testing.assert_allclose(probs(predict(pickled, files, progress=False), model),
                               probs(predict(model, files, progress=False), model), atol=1e-6)

def test_unsafe_load_warns_and_predicts_the_same(trained, model):
    _assert_pickle_predicts_the_same(trained[1], model, trained[2][:3])

def _broken(run, tmp_path, drop=None, edit=None, write=None):
    d = tmp_path/'broken'; shutil.copytree(run, d)
    if drop: (d/drop).unlink()
    if edit:
        m = json.loads((d/'model.json').read_text()); edit(m); (d/'model.json').write_text(json.dumps(m))
    if write: (d/write[0]).write_bytes(write[1])
    return d

@pytest.mark.parametrize('case, culprit, message', [
    (dict(drop='model.json'), 'model.json', 'missing'),
    (dict(drop='model.safetensors'), 'model.safetensors', 'missing'),
    (dict(edit=lambda m: m.update(format_version=FORMAT_VERSION+1)), 'model.json', 'newer breakhis-clf'),
    (dict(edit=lambda m: m.update(format_version='0.1')), 'model.json', 'incompatible'),
    (dict(edit=lambda m: m.pop('format')), 'model.json', 'not a breakhis-clf model'),
    (dict(edit=lambda m: m.pop('classes')), 'model.json', 'missing fields classes'),
    (dict(edit=lambda m: m.update(arch='resnet999')), 'model.json', "field `arch` is 'resnet999'; expected a known architecture"),
    (dict(edit=lambda m: m.update(arch='resnet34')), 'model.safetensors', 'do not fit resnet34'),
    (dict(edit=lambda m: m.update(n_out=8, classes=list('ABCDEFGH'))), 'model.safetensors', 'wrong shape'),
    (dict(write=('model.json', b'{not json')), 'model.json', 'not valid JSON'),
    (dict(write=('model.safetensors', b'garbage' * 10)), 'model.safetensors', 'unreadable weights'),
], ids=['no-json', 'no-weights', 'newer-format', 'old-format', 'not-ours', 'missing-field', 'unknown-arch',
        'other-arch', 'other-n-out', 'bad-json', 'bad-weights'])
def test_broken_model_folder(trained, tmp_path, case, culprit, message):
    d = _broken(trained[1], tmp_path, **case)
    with pytest.raises(ModelError, match=message) as e: load_model(d, device='cpu')
    assert str(e.value).startswith(str(d/culprit))

def test_model_folder_not_found(tmp_path):
    with pytest.raises(ModelError, match='model folder not found') as e: load_model(tmp_path/'nope')
    assert str(tmp_path/'nope') in str(e.value)
    with pytest.raises(ModelError, match='model folder not found'): load_model(tmp_path/'nope', safe=False)

def test_unsafe_load_missing_pickle(trained, tmp_path):
    d = _broken(trained[1], tmp_path, drop='model.pkl')
    with pytest.raises(ModelError, match='missing') as e: load_model(d, safe=False)
    assert str(d/'model.pkl') in str(e.value)


# --- predicting ---------------------------------------------------------------------------------

def test_predict_matches_fastai_learner(trained, model):
    learn, _, files = trained
    preds = predict(model, files, bs=3, progress=False)  # several batches, one partial
    ref, _ = learn.get_preds(dl=learn.dls.test_dl([str(f) for f in files]))
    assert preds.path.tolist() == [str(f) for f in files] and (preds.error == '').all()
    np.testing.assert_allclose(probs(preds, model), ref.numpy(), atol=1e-5)
    assert preds.predicted.tolist() == [model.classes[i] for i in ref.argmax(1)] and 'label' not in preds.columns
    np.testing.assert_allclose(preds.confidence, ref.max(1).values.numpy(), atol=1e-5)

def test_predict_real_breakhis_images(trained, model, sample_root):
    "The 23 real 700x460 BreakHis PNGs, found recursively, match the learner's probabilities"
    preds = predict(model, sample_root, bs=8, progress=False)
    assert len(preds) == 23 and (preds.error == '').all()
    ref, _ = trained[0].get_preds(dl=trained[0].dls.test_dl(preds.path.tolist()))
    np.testing.assert_allclose(probs(preds, model), ref.numpy(), atol=1e-5)

def test_predict_folder_recursive(trained, model):
    root = Path(trained[2][0]).parents[7]  # the BreaKHis_v1 folder
    preds = predict(model, root, progress=False)
    assert sorted(preds.path) == sorted(str(f) for f in root.rglob('*.png'))
    assert len(preds) == len(trained[2])

def test_tta_is_dihedral_invariant(trained, model, good, tmp_path):
    "TTA averages over flips and 90° rotations, so a rotated or mirrored copy gets the same probabilities"
    sq = good.crop((0, 0, 64, 64))
    paths = []
    for name, t in [('orig', None), ('rot90', Image.Transpose.ROTATE_90), ('flip', Image.Transpose.FLIP_LEFT_RIGHT),
                    ('transpose', Image.Transpose.TRANSPOSE)]:
        (sq if t is None else sq.transpose(t)).save(tmp_path/f'{name}.png'); paths.append(tmp_path/f'{name}.png')
    p = probs(predict(model, paths, tta=True, progress=False), model)
    for row in p[1:]: np.testing.assert_allclose(row, p[0], atol=1e-5)
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-6)
    x = torch.stack([model.item(Image.open(f).convert('RGB')) for f in paths])
    views = torch.stack([class_probs(model, x.dihedral(k)) for k in range(8)]).mean(0)
    np.testing.assert_allclose(class_probs(model, x, tta=True).numpy(), views.numpy(), atol=1e-6)

def test_progress_bar_only_for_many_images(trained, model, capsys):
    predict(model, trained[2][:2], bs=1, progress=True)
    assert '100.00%' in capsys.readouterr().out
    predict(model, trained[2][:2], bs=4, progress=True)
    assert '%' not in capsys.readouterr().out


# --- bad input ----------------------------------------------------------------------------------

def _one(model, path):
    df = predict(model, [path], progress=False)
    assert len(df) == 1 and df.path[0] == str(path)
    return df.iloc[0]

def _failed(model, path, problem):
    r = _one(model, path)
    assert problem in r.error and pd.isna(r.predicted) and np.isnan(r.confidence), r.error

def _valid(model, path):
    r = _one(model, path)
    assert r.error == '' and r.predicted in model.classes and abs(r[[f'p_{c}' for c in model.classes]].sum() - 1) < 1e-5
    return r

def test_missing_path(model, tmp_path): _failed(model, tmp_path/'nope.png', 'no such file or folder')

def test_empty_folder(model, tmp_path):
    (tmp_path/'sub').mkdir(); (tmp_path/'sub'/'readme.txt').write_text('no images here')
    _failed(model, tmp_path, 'folder holds no images')

def test_text_file_named_png(model, tmp_path):
    (tmp_path/'notes.png').write_text('this is not an image')
    _failed(model, tmp_path/'notes.png', 'not an image')

def test_truncated_png(trained, model, tmp_path):
    (tmp_path/'cut.png').write_bytes(trained[2][0].read_bytes()[:400])
    _failed(model, tmp_path/'cut.png', 'truncated')

def test_zero_byte_file(model, tmp_path):
    (tmp_path/'empty.png').write_bytes(b'')
    _failed(model, tmp_path/'empty.png', 'empty file')

@pytest.mark.parametrize('mode', ['L', 'RGBA', 'I;16'])
def test_other_png_modes_are_converted(model, good, tmp_path, mode):
    "Grayscale, RGBA and 16-bit PNGs are valid images: predicted like their 8-bit RGB equivalent"
    grey = good.convert('L')
    img = {'L': grey, 'RGBA': good.convert('RGBA'),
           'I;16': Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)}[mode]
    img.save(tmp_path/'x.png')
    with Image.open(tmp_path/'x.png') as im: assert im.mode == mode
    ref = (good if mode == 'RGBA' else grey.convert('RGB'))
    ref.save(tmp_path/'ref.png')
    np.testing.assert_allclose(probs(pd.DataFrame([_valid(model, tmp_path/'x.png')]), model),
                               probs(pd.DataFrame([_valid(model, tmp_path/'ref.png')]), model), atol=1e-5)

def test_very_large_image_is_resized(model, good, tmp_path):
    big = good.resize((6000, 4000))
    big.save(tmp_path/'big.png', compress_level=1)
    assert model.item(big).shape == (3, 64, 64)
    _valid(model, tmp_path/'big.png')

def test_decompression_bomb_is_refused(model, good, tmp_path, monkeypatch):
    "Images beyond PIL's decompression-bomb limit are reported, not decoded"
    good.resize((300, 200)).save(tmp_path/'bomb.png')
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 10_000)  # 60,000 pixels > 2x the limit
    _failed(model, tmp_path/'bomb.png', 'too large')

def test_batch_keeps_good_images_and_lists_bad(trained, model, tmp_path):
    files = trained[2][:3]
    (tmp_path/'notes.png').write_text('nope'); (tmp_path/'empty.png').write_bytes(b'')
    items = [files[0], tmp_path/'notes.png', files[1], tmp_path/'missing.png', tmp_path/'empty.png', files[2]]
    df = predict(model, items, bs=2, progress=False)
    ok, bad = df[df.error == ''], df[df.error != '']
    assert ok.path.tolist() == [str(f) for f in files]
    assert sorted(Path(p).name for p in bad.path) == ['empty.png', 'missing.png', 'notes.png']
    ref = predict(model, files, progress=False)
    np.testing.assert_allclose(probs(ok, model), probs(ref, model), atol=1e-5)
    lines, problems = predict_lines(df)
    assert len(lines) == 3 and len(problems) == 3
    assert all(l.split('\t')[1] in model.classes for l in lines)
    assert any(p.startswith(str(tmp_path/'notes.png')) and 'not an image' in p for p in problems)


# --- efficientnet_lite0: the pretrained model offline, saved, loaded and used exactly like a ResNet ----------

@pytest.fixture(scope='module')
def effnet(tmp_path_factory):
    "(learner, run folder, image files): the pretrained efficientnet_lite0, head trained one epoch on tiny synthetic data, saved"
    tmp = tmp_path_factory.mktemp('effnet')
    root = make_synthetic_breakhis(tmp/'data', n_patients=4, images_per_patient=2, magnifications=(40, 100),
                                   size=(96, 64), seed=1, progress=False)
    df = patient_split(breakhis_df(root), valid_pct=0.5, seed=0)
    learn = breakhis_learner(breakhis_dls(df, size=64, bs=4, num_workers=0, seed=0), arch='efficientnet_lite0', seed=0)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    return learn, save_model(learn, tmp/'run'), [Path(p) for p in df.path]

@pytest.fixture(scope='module')
def effnet_model(effnet): return load_model(effnet[1], safe=True, device='cpu')

def test_effnet_model_json(effnet):
    "The safe form records the architecture and its own statistics (mean = std = 0.5), not ImageNet's"
    meta = json.loads((effnet[1]/'model.json').read_text())
    assert meta['arch'] == 'efficientnet_lite0' and meta['mean'] == [0.5]*3 and meta['std'] == [0.5]*3
    assert meta['size'] == [64, 64] and meta['n_out'] == 2 and meta['classes'] == ['benign', 'malignant']
    assert sorted(f.name for f in effnet[1].iterdir()) == sorted(MODEL_FILES)

def test_effnet_safe_load_gives_the_learners_probabilities(effnet, effnet_model):
    learn, _, files = effnet
    ref, got = learn.model.state_dict(), effnet_model.model.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k].cpu(), got[k]) for k in ref)
    preds = predict(effnet_model, files, bs=3, progress=False)
    with learn.no_bar(): lp, _ = learn.get_preds(dl=learn.dls.test_dl([str(f) for f in files]))
    np.testing.assert_allclose(probs(preds, effnet_model), lp.numpy(), atol=1e-5)
    assert preds.predicted.tolist() == [effnet_model.classes[i] for i in lp.argmax(1)]

def test_effnet_same_network_on_same_input(effnet, effnet_model):
    "Fed the same tensors, the loaded network and the learner's give identical logits"
    learn, _, files = effnet
    x = torch.stack([effnet_model.item(Image.open(f).convert('RGB')) for f in files[:4]])
    with torch.no_grad():
        xn = effnet_model.normalize(effnet_model.to_float(TensorImage(x)))
        assert torch.equal(learn.model.eval()(xn), effnet_model.model(xn))

def test_effnet_safe_load_never_unpickles(effnet, monkeypatch):
    def boom(*a, **k): raise AssertionError('unpickling in safe mode')
    for mod, name in [(pickle, 'load'), (pickle, 'loads'), (torch, 'load')]: monkeypatch.setattr(mod, name, boom)
    assert load_model(effnet[1], device='cpu').meta['arch'] == 'efficientnet_lite0'

def test_effnet_tta_is_dihedral_invariant(effnet, effnet_model, tmp_path):
    sq = Image.open(effnet[2][0]).convert('RGB').crop((0, 0, 64, 64))
    paths = []
    for name, t in [('orig', None), ('rot90', Image.Transpose.ROTATE_90), ('flip', Image.Transpose.FLIP_TOP_BOTTOM)]:
        (sq if t is None else sq.transpose(t)).save(tmp_path/f'{name}.png'); paths.append(tmp_path/f'{name}.png')
    p = probs(predict(effnet_model, paths, tta=True, progress=False), effnet_model)
    for row in p[1:]: np.testing.assert_allclose(row, p[0], atol=1e-5)

def test_effnet_unsafe_load_predicts_the_same(effnet, effnet_model):
    _assert_pickle_predicts_the_same(effnet[1], effnet_model, effnet[2][:3])

def test_effnet_weights_do_not_fit_a_resnet(effnet, tmp_path):
    d = _broken(effnet[1], tmp_path, edit=lambda m: m.update(arch='resnet18'))
    with pytest.raises(ModelError, match='do not fit resnet18'): load_model(d, device='cpu')

def test_effnet_predict_cmd(effnet, capsys):
    assert predict_cmd(effnet[1], effnet[2][:2]) == 0
    rows = [l.split('\t') for l in capsys.readouterr().out.splitlines()]
    assert [r[0] for r in rows] == [str(f) for f in effnet[2][:2]] and all(r[1] in ('benign', 'malignant') for r in rows)


# --- the command-line entry point ---------------------------------------------------------------

def test_predict_cmd_prints_one_line_per_image(trained, tmp_path, capsys):
    files = trained[2][:2]
    (tmp_path/'notes.png').write_text('nope')
    assert predict_cmd(trained[1], [*files, tmp_path/'notes.png']) == 0
    out, err = capsys.readouterr()
    assert [l.split('\t')[0] for l in out.splitlines()] == [str(f) for f in files]
    assert str(tmp_path/'notes.png') in err and 'not an image' in err

def test_predict_cmd_csv(trained, tmp_path, capsys):
    csv = tmp_path/'preds.csv'
    assert predict_cmd(trained[1], trained[2][:3], csv=csv) == 0
    df = pd.read_csv(csv)
    assert len(df) == 3 and list(df.columns) == ['path', 'predicted', 'confidence', 'p_benign', 'p_malignant', 'error']
    assert str(csv) in capsys.readouterr().out
    before = csv.read_bytes()
    with pytest.raises(UserError, match='refusing to overwrite'): predict_cmd(trained[1], trained[2][:1], csv=csv)
    assert csv.read_bytes() == before

def test_predict_cmd_csv_in_missing_folder(trained, tmp_path):
    with pytest.raises(UserError, match='does not exist'): predict_cmd(trained[1], trained[2][:1], csv=tmp_path/'no'/'x.csv')
    assert not (tmp_path/'no').exists()

def test_predict_rejects_bad_batch_size(model, trained):
    with pytest.raises(UserError, match='batch size'): predict(model, trained[2][:1], bs=0)

def test_predict_cmd_fails_when_nothing_predicted(trained, tmp_path, capsys):
    (tmp_path/'notes.png').write_text('nope')
    with pytest.raises(UserError, match='no image could be predicted'):
        predict_cmd(trained[1], [tmp_path/'notes.png', tmp_path/'missing.png'])
    err = capsys.readouterr().err
    assert str(tmp_path/'notes.png') in err and str(tmp_path/'missing.png') in err


# --- `breakhis-clf predict`, run as a user runs it ----------------------------------------------

import subprocess, sys

def cli(*args):
    "Run `breakhis-clf ARGS...` in a fresh process; return (exit status, stdout, stderr)"
    exe = Path(sys.executable).with_name('breakhis-clf')
    cmd = [str(exe)] if exe.exists() else [sys.executable, '-c', 'import sys; from breakhis_clf.cli import main; sys.exit(main())']
    r = subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout, r.stderr

def test_cli_predict_mixed_batch(trained, tmp_path, model):
    files = trained[2][:2]
    (tmp_path/'notes.png').write_text('nope')
    rc, out, err = cli('predict', '--model', trained[1], *files, tmp_path/'notes.png', tmp_path/'missing.png')
    assert rc == 0, err
    rows = [l.split('\t') for l in out.splitlines()]
    ref = predict(model, files, progress=False)  # the columns printed: path, predicted, confidence (4 decimals)
    assert rows == [[str(f), c, f'{p:.4f}'] for f,c,p in zip(files, ref.predicted, ref.confidence)]
    assert f'{tmp_path/"notes.png"}: not an image' in err and f'{tmp_path/"missing.png"}: no such file' in err
    assert 'Traceback' not in err

def test_cli_predict_csv_tta(trained, tmp_path, model):
    csv = tmp_path/'out.csv'
    rc, out, err = cli('predict', '--model', trained[1], '--tta', '--csv', csv, trained[2][0].parent)
    assert rc == 0, err
    df = pd.read_csv(csv)
    ref = predict(model, trained[2][0].parent, tta=True, progress=False)
    assert df.path.tolist() == ref.path.tolist()
    np.testing.assert_allclose(probs(df, model), probs(ref, model), atol=1e-5)
    rc, out, err = cli('predict', '--model', trained[1], '--csv', csv, trained[2][0])
    assert rc == 2 and err.strip().splitlines()[-1].startswith('breakhis-clf: error:') and 'refusing to overwrite' in err
    assert 'Traceback' not in err and pd.read_csv(csv).equals(df)

def test_cli_predict_nothing_predicted(trained, tmp_path):
    (tmp_path/'empty').mkdir(); (tmp_path/'zero.png').write_bytes(b'')
    rc, out, err = cli('predict', '--model', trained[1], tmp_path/'empty', tmp_path/'zero.png', tmp_path/'nope.png')
    assert rc == 2 and out == '' and 'Traceback' not in err
    for p in ('empty', 'zero.png', 'nope.png'): assert str(tmp_path/p) in err
    assert 'no image could be predicted' in err.strip().splitlines()[-1]

@pytest.mark.parametrize('case, culprit', [(None, 'nope'), (dict(drop='model.safetensors'), 'model.safetensors'),
                                           (dict(edit=lambda m: m.update(format_version=FORMAT_VERSION+1)), 'model.json')],
                         ids=['no-folder', 'no-weights', 'newer-format'])
def test_cli_predict_broken_model(trained, tmp_path, case, culprit):
    d = tmp_path/'nope' if case is None else _broken(trained[1], tmp_path, **case)
    rc, out, err = cli('predict', '--model', d, trained[2][0])
    assert rc == 2 and out == '' and 'Traceback' not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith('breakhis-clf: error: ') and str(d/culprit if case else d) in lines[-1]


def test_model_files_share_permissions_and_are_never_half_written(trained, tmp_path, monkeypatch):
    "Every model file gets the usual permissions (safetensors' private 0600 is not kept); a failed write leaves no model files"
    learn, run, _ = trained
    modes = {f: (run/f).stat().st_mode & 0o777 for f in MODEL_FILES}
    assert len(set(modes.values())) == 1, modes
    def full(*a, **k): raise OSError(28, 'No space left on device')
    monkeypatch.setattr(learn, 'export', full)
    with pytest.raises(UserError, match=r'model\.pkl: cannot be written .*No space left on device'):
        save_model(learn, tmp_path/'run')
    assert list((tmp_path/'run').iterdir()) == []  # neither the weights written before nor a partial file
