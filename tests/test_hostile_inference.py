"""Hostile input to `breakhis_clf.inference` (issue 12): a `model.json` with bad values, weights that give NaN,
symlink loops, repeated files and odd file names given to `predict`, and `evaluate_run` on runs that did not
complete or cannot be written to. Each case is one clear line (a `UserError`), never a traceback or a printed NaN."""
import csv, io, json, math, os, shutil, warnings
from pathlib import Path

import numpy as np, pandas as pd, pytest, torch
from safetensors.torch import load_file, save_file

from breakhis_clf.data import UserError, breakhis_df, patient_split
from breakhis_clf.evaluate import META_COLS
from breakhis_clf.train import write_run_state
from breakhis_clf.inference import (MAX_META_BYTES, SIZE_RANGE, ModelError, read_meta, load_model, predict, predict_cmd,
                                    image_files, evaluate_run, BreakHisModel)
from test_inference import trained, model, _broken, cli  # the tiny resnet18 saved in a run folder, and its helpers


# --- model.json: every field checked --------------------------------------------------------------

NAN, INF = float('nan'), float('inf')
BAD_FIELDS = [  # (field, value): each must give one line naming model.json and the field
    ('size', 0), ('size', -5), ('size', 'ab'), ('size', [0, 0]), ('size', [-5, 64]), ('size', [64]), ('size', [64, 64, 3]),
    ('size', [SIZE_RANGE[1] + 1, 64]), ('size', [40000, 40000]), ('size', [64.5, 64]), ('size', [True, 64]), ('size', None),
    ('mean', [0.5, 0.5]), ('mean', [0.5]*4), ('mean', [NAN]*3), ('mean', [0.5, INF, 0.5]), ('mean', 'imagenet'), ('mean', ['0.5']*3),
    ('std', [0, 0, 0]), ('std', [0.2, -0.2, 0.2]), ('std', [NAN]*3), ('std', [0.5, 0.5]), ('std', None), ('std', [True]*3),
    ('n_out', 1), ('n_out', 3), ('n_out', '2'), ('n_out', 2.0), ('n_out', None),
    ('classes', 'benign'), ('classes', ['benign', 'benign']), ('classes', ['', 'malignant']), ('classes', [0, 1]),
    ('classes', ['benign']), ('classes', {'benign': 0}),
    ('arch', ['resnet18']), ('arch', 18), ('arch', 'resnet999'),
    ('resize_method', 'stretch'), ('resize_method', 2), ('pad_mode', 'mirror'), ('pad_mode', None),
    ('resample', 99), ('resample', -1), ('resample', 2.5), ('resample', 'bilinear'), ('resample', True),
    ('target', 'colour'), ('target', 1), ('trained_on', 'yesterday'), ('trained_on', {'magnifications': 40}),
]

@pytest.mark.parametrize('field, value', BAD_FIELDS, ids=[f'{f}={v!r}' for f,v in BAD_FIELDS])
def test_bad_model_json_field(trained, tmp_path, field, value):
    d = _broken(trained[1], tmp_path, edit=lambda m: m.update({field: value}))
    with pytest.raises(ModelError) as e: load_model(d, device='cpu')
    msg = str(e.value)
    assert msg.startswith(f'{d/"model.json"}: field `{field}`') and '\n' not in msg, msg
    assert 'expected' in msg and len(msg) - len(str(d)) < 300  # a huge value is not dumped whole

@pytest.mark.parametrize('field, value', [('size', [8, 8]), ('size', [SIZE_RANGE[1]]*2), ('size', [64, 96]), ('resample', 3),
                                          ('resize_method', 'squish'), ('pad_mode', 'zeros'), ('target', None),
                                          ('mean', [0, 0, 0]), ('mean', [-1.5, 0.5, 2]), ('std', [1, 1, 1])])
def test_good_model_json_values_load(trained, tmp_path, field, value):
    "The checks refuse nothing a working model can have: the edges of the ranges, ints for floats, another method"
    d = _broken(trained[1], tmp_path, edit=lambda m: m.update({field: value}))
    assert read_meta(d)[field] == value

def test_no_normalisation_loads_and_the_smallest_size_predicts(trained, tmp_path):
    d = _broken(trained[1], tmp_path, edit=lambda m: m.update(mean=None, std=None, size=[SIZE_RANGE[0]]*2))
    m = load_model(d, device='cpu')
    assert m.normalize is None
    preds = predict(m, trained[2][:2], progress=False)
    assert (preds.error == '').all() and np.isfinite(preds.confidence).all()

@pytest.mark.parametrize('text, message', [
    ('[1, 2, 3]', 'not a breakhis-clf model file'),
    ('"model"', 'not a breakhis-clf model file'),
    ('', 'not valid JSON'),
    (b'\xff\xfe\x00binary', 'not valid JSON'),
], ids=['a-list', 'a-string', 'empty', 'binary'])
def test_model_json_not_an_object(trained, tmp_path, text, message):
    d = _broken(trained[1], tmp_path, write=('model.json', text if isinstance(text, bytes) else text.encode()))
    with pytest.raises(ModelError, match=message) as e: read_meta(d)
    assert str(e.value).startswith(str(d/'model.json'))

def test_format_version_true_is_not_one(trained, tmp_path):
    "JSON `true` equals 1 in Python: it must not pass for format version 1"
    d = _broken(trained[1], tmp_path, edit=lambda m: m.update(format_version=True))
    with pytest.raises(ModelError, match='format version True'): read_meta(d)

def test_huge_model_json_is_not_read(trained, tmp_path, monkeypatch):
    "A model.json over the limit is refused from its size, before a byte is parsed"
    d = _broken(trained[1], tmp_path, edit=lambda m: m.update(padding='x' * MAX_META_BYTES))
    monkeypatch.setattr(json, 'loads', lambda *a, **k: pytest.fail('parsed a huge model.json'))
    with pytest.raises(ModelError, match='more than a model.json may have') as e: read_meta(d)
    assert str(e.value).startswith(str(d/'model.json'))

def test_model_json_is_a_folder(trained, tmp_path):
    d = _broken(trained[1], tmp_path, drop='model.json')
    (d/'model.json').mkdir()
    with pytest.raises(ModelError, match='cannot be read') as e: read_meta(d)
    assert str(e.value).startswith(str(d/'model.json'))

@pytest.mark.parametrize('field, value', [('size', 0), ('std', [NAN]*3)], ids=['size-0', 'std-nan'])
def test_cli_bad_model_json_is_one_line(trained, tmp_path, field, value):
    "What a user sees: exit status 2, one error line naming the file and the field, no result (no `benign nan`)"
    d = _broken(trained[1], tmp_path, edit=lambda m: m.update({field: value}))
    rc, out, err = cli('predict', '--model', d, trained[2][0])
    assert rc == 2 and out == '' and 'Traceback' not in err, err
    assert err.strip().splitlines()[-1].startswith(f'breakhis-clf: error: {d/"model.json"}: field `{field}`')


# --- weights whose predictions are not finite ----------------------------------------------------

def _with_weights(run, tmp_path, change):
    "A copy of `run` whose safetensors weights went through `change(state_dict)`"
    d = tmp_path/'weights'; shutil.copytree(run, d)
    sd = load_file(d/'model.safetensors'); change(sd)
    save_file(sd, d/'model.safetensors')
    return d

def _head(sd):
    "The name of the last layer's weight: (classes, features)"
    return [k for k,v in sd.items() if v.ndim == 2][-1]

def _nan(sd): sd[_head(sd)][0, 0] = NAN
def _huge(sd): sd[_head(sd)].fill_(3e38)  # finite, but every logit overflows: the probabilities are NaN

def test_nan_weights_are_refused_on_loading(trained, tmp_path):
    d = _with_weights(trained[1], tmp_path, _nan)
    with pytest.raises(ModelError, match='non-finite values .*the weights are broken') as e: load_model(d, device='cpu')
    assert str(e.value).startswith(str(d/'model.safetensors'))

def test_non_finite_probabilities_are_an_error(trained, tmp_path):
    d = _with_weights(trained[1], tmp_path, _huge)
    m = load_model(d, device='cpu')  # every weight is finite: only the predictions show it
    files = trained[2][:3]
    with pytest.raises(ModelError) as e: predict(m, files, bs=2, progress=False)
    assert str(e.value) == f'{d}: produced non-finite probabilities for {files[0]}: the weights are broken'

@pytest.mark.parametrize('change', [_nan, _huge], ids=['nan-weights', 'overflowing-weights'])
def test_predict_cmd_prints_no_nan(trained, tmp_path, capsys, change):
    d = _with_weights(trained[1], tmp_path, change)
    with pytest.raises(ModelError, match=f'^{d}.*the weights are broken'): predict_cmd(d, trained[2][:2])
    assert capsys.readouterr().out == ''
    with pytest.raises(ModelError): predict_cmd(d, trained[2][:2], csv=tmp_path/'out.csv')
    assert not (tmp_path/'out.csv').exists()

def test_predict_with_nan_in_memory_names_no_folder(trained):
    "A model made in memory (no folder) says so"
    loaded = load_model(trained[1], device='cpu')
    m = BreakHisModel(loaded.model, loaded.meta)  # no `source`
    with torch.no_grad(): m.model[-1][-1].weight[:] = NAN
    with pytest.raises(ModelError, match='^the model: produced non-finite probabilities'): predict(m, trained[2][:1], progress=False)

def test_cli_nan_weights(trained, tmp_path):
    d = _with_weights(trained[1], tmp_path, _huge)
    rc, out, err = cli('predict', '--model', d, trained[2][0])
    assert rc == 2 and out == '' and 'Traceback' not in err and 'nan' not in out
    assert err.strip().splitlines()[-1] == f'breakhis-clf: error: {d}: produced non-finite probabilities for {trained[2][0]}: the weights are broken'


# --- predict: links, repeats and odd names -------------------------------------------------------

@pytest.fixture
def imgs(trained, tmp_path):
    "A folder `imgs` with two images a.png and b.png"
    d = tmp_path/'imgs'; d.mkdir()
    for name, f in zip(('a.png', 'b.png'), trained[2]): shutil.copy(f, d/name)
    return d

def _paths(df): return df.path.tolist()

def test_symlink_loop_is_followed_once(model, imgs):
    (imgs/'loop').symlink_to(imgs)                      # imgs/loop -> imgs
    (imgs/'sub').mkdir(); (imgs/'sub'/'up').symlink_to('..')  # imgs/sub/up -> imgs
    (imgs/'self').symlink_to('self')                    # a link to itself
    assert _paths(predict(model, imgs, progress=False)) == [str(imgs/'a.png'), str(imgs/'b.png')]

def test_linked_folder_is_searched_once_under_its_real_name(model, imgs, trained, tmp_path):
    other = tmp_path/'other'; other.mkdir(); shutil.copy(trained[2][2], other/'c.png')
    (imgs/'zz_link').symlink_to(other)
    (imgs/'other').symlink_to(other)
    (imgs/'b_again.png').symlink_to(imgs/'b.png')       # a file link: the same image
    assert _paths(predict(model, imgs, progress=False)) == [str(imgs/'a.png'), str(imgs/'b.png'), str(imgs/'other'/'c.png')]
    shutil.move(str(other), str(imgs/'real'))           # now a real folder and a link to it: the real name is kept
    (imgs/'zz_link').unlink(); (imgs/'other').unlink(); (imgs/'a_link').symlink_to(imgs/'real')
    assert str(imgs/'real'/'c.png') in _paths(predict(model, imgs, progress=False))

@pytest.mark.parametrize('items, expected', [
    (['a.png', 'a.png'], ['a.png']),
    (['a.png', '.', './a.png'], ['a.png', 'b.png']),
    (['.', 'b.png'], ['a.png', 'b.png']),
    (['b.png', '.'], ['b.png', 'a.png']),
    (['./b.png', 'b.png', '../imgs/b.png'], ['b.png']),
    (['../imgs/b.png', 'b.png', '.'], ['../imgs/b.png', 'a.png']),
], ids=['twice', 'file-then-folder', 'folder-then-file', 'file-first', 'three-spellings', 'first-spelling-kept'])
def test_same_file_given_twice_is_predicted_once(model, imgs, monkeypatch, items, expected):
    "Each file once, under the first name it was given by"
    monkeypatch.chdir(imgs)
    preds = predict(model, items, progress=False)
    assert _paths(preds) == expected and (preds.error == '').all()

def test_missing_path_given_twice_is_reported_once(model, tmp_path):
    preds = predict(model, [tmp_path/'nope.png', tmp_path/'nope.png'], progress=False)
    assert _paths(preds) == [str(tmp_path/'nope.png')]

def test_duplicate_items_predict_the_same_as_once(model, imgs):
    once = predict(model, [imgs/'a.png'], progress=False)
    twice = predict(model, [imgs/'a.png', imgs, imgs/'a.png'], progress=False)
    pd.testing.assert_frame_equal(twice.iloc[:1], once)

@pytest.fixture
def odd(imgs):
    "Images whose names hold a newline, a tab and a quote, and a bad file whose name holds a newline"
    names = ['new\nline.png', 'tab\there.png', 'quote".png']
    for n in names: shutil.copy(imgs/'a.png', imgs/n)
    (imgs/'bad\nname.png').write_text('not an image')
    return imgs, [imgs/n for n in names]

def test_printed_tsv_is_one_record_per_image(trained, model, odd, capsys):
    folder, files = odd
    assert predict_cmd(trained[1], files + [folder/'bad\nname.png']) == 0
    out, err = capsys.readouterr()
    rows = list(csv.reader(io.StringIO(out), delimiter='\t'))
    ref = predict(model, files, progress=False)
    assert rows == [[str(f), c, f'{p:.4f}'] for f,c,p in zip(files, ref.predicted, ref.confidence)]
    bad = str(folder/'bad\nname.png')
    skipped = [l for l in err.splitlines() if 'skipped' in l]  # the bad file's name in quotes, on one line
    assert skipped == [f"breakhis-clf: skipped {bad!r}: not an image (unreadable or unknown format)"]

def test_csv_output_keeps_odd_names(trained, odd, tmp_path):
    folder, files = odd
    assert predict_cmd(trained[1], files, csv=tmp_path/'out.csv') == 0
    df = pd.read_csv(tmp_path/'out.csv')
    assert df.path.tolist() == [str(f) for f in files]
    assert list(df.columns) == ['path', 'predicted', 'confidence', 'p_benign', 'p_malignant', 'error']
    assert not list(tmp_path.glob('.*partial'))

def test_image_files_walks_like_before(trained):
    "On an ordinary tree (no links) the walk finds what fastai's `get_files` found, in the same order"
    from fastai.data.transforms import get_files
    from breakhis_clf.data import IMAGE_EXTS
    root = trained[2][0].parents[7]
    assert image_files(root)[0] == sorted(get_files(root, extensions=IMAGE_EXTS, recurse=True))


# --- evaluate_run: runs that did not complete, folders that cannot be written ---------------------

@pytest.fixture
def run(trained, tmp_path):
    "A copy of the trained run folder with its `split.csv`"
    d = tmp_path/'run'; shutil.copytree(trained[1], d)
    df = patient_split(breakhis_df(trained[2][0].parents[7]), valid_pct=0.5, seed=0)
    df[[*META_COLS, 'subset', 'is_valid']].to_csv(d/'split.csv', index=False)
    return d

def _evaluate(run, **kw):
    "`evaluate_run` with every warning recorded: (report, warning messages)"
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        rep = evaluate_run(run, n_boot=0, progress=False, **kw)
    return rep, [str(w.message) for w in ws if issubclass(w.category, UserWarning)]

def test_interrupted_run_is_said_once(run):
    write_run_state(run, 'interrupted', epochs_done=2, best_epoch=1, message='interrupted at epoch 2')
    rep, ws = _evaluate(run)
    said = [w for w in ws if 'this run is' in w]
    assert said == [f'{run}: this run is interrupted (interrupted at epoch 2; epochs done 2; best epoch 1); '
                    'its saved model is the best epoch before that']
    assert rep['run_state']['state'] == 'interrupted' and rep['run_state']['best_epoch'] == 1
    assert json.loads((Path(rep['out'])/'metrics.json').read_text())['run_state']['state'] == 'interrupted'

@pytest.mark.parametrize('state', ['running', 'failed'])
def test_other_unfinished_states_are_said(run, state):
    write_run_state(run, state)
    rep, ws = _evaluate(run)
    assert [w for w in ws if 'this run is' in w] == [f'{run}: this run is {state}; its saved model is the best epoch before that']
    assert rep['run_state']['state'] == state

@pytest.mark.parametrize('write', [True, False], ids=['state-complete', 'no-state-file'])
def test_complete_run_is_quiet(run, write):
    if write: write_run_state(run, 'complete', epochs_done=3)
    rep, ws = _evaluate(run)
    assert not [w for w in ws if 'this run is' in w] and rep['run_state']['state'] == 'complete'

def test_failed_run_without_model(run):
    write_run_state(run, 'failed', message='training diverged at epoch 1 (loss nan): lower --lr')
    (run/'model.json').unlink()
    with pytest.raises(ModelError, match='model.json: missing'): _evaluate(run)
    assert not [p for p in run.iterdir() if p.name.startswith(('evaluation', '.evaluation'))]

def _left(folder):
    "What an evaluation may have left in `folder`: report folders, finished or not"
    return sorted(p.name for p in folder.iterdir() if 'evaluation' in p.name or 'report' in p.name or p.name.endswith('.partial'))

@pytest.mark.skipif(os.geteuid() == 0, reason='root can write into read-only folders')
def test_read_only_run_folder_for_real(run):
    run.chmod(0o555)
    try:
        with pytest.raises(UserError, match='read-only') as e: _evaluate(run)
        assert '\n' not in str(e.value) and _left(run) == []
    finally: run.chmod(0o755)

def test_read_only_run_folder(run, monkeypatch):
    "Simulated (the tests may run as root): one line before any work, nothing created"
    import breakhis_clf.inference as inf
    monkeypatch.setattr(inf.os, 'access', lambda p, mode: Path(p) != run)
    monkeypatch.setattr(inf, 'load_model', lambda *a, **k: pytest.fail('worked before checking the report can be written'))
    with pytest.raises(UserError) as e: evaluate_run(run, n_boot=0, progress=False)
    assert str(e.value) == f'{run/"evaluation"}: cannot write the report: {run} is read-only; write it elsewhere (--out); nothing was written'
    assert _left(run) == []

def test_read_only_out_folder(run, tmp_path, monkeypatch):
    import breakhis_clf.inference as inf
    ro = tmp_path/'ro'; ro.mkdir()
    monkeypatch.setattr(inf.os, 'access', lambda p, mode: Path(p) != ro)
    with pytest.raises(UserError, match=f'^{ro/"deep"/"report"}: cannot write the report: {ro} is read-only'):
        evaluate_run(run, out=ro/'deep'/'report', n_boot=0, progress=False)
    assert list(ro.iterdir()) == [] and _left(run) == []

def test_out_under_a_file(run, tmp_path):
    (tmp_path/'file.txt').write_text('x')
    with pytest.raises(UserError, match='is not a folder'): evaluate_run(run, out=tmp_path/'file.txt'/'report', n_boot=0, progress=False)
    assert (tmp_path/'file.txt').read_text() == 'x'

def test_write_error_leaves_no_half_report(run, monkeypatch):
    "The disk fills while the report is written: one line naming the folder and the cause, and no report folder at all"
    import breakhis_clf.evaluate as ev
    calls = []
    def full(fig, fn, note=None):
        calls.append(fn)
        if len(calls) == 2: raise OSError(28, 'No space left on device', str(fn))
        Path(fn).write_bytes(b'png')
    monkeypatch.setattr(ev, '_save', full)
    with pytest.raises(UserError, match='No space left on device') as e: _evaluate(run)
    assert str(e.value).startswith(str(run/'evaluation')) and '\n' not in str(e.value)
    assert len(calls) == 2 and _left(run) == []

def test_non_finite_model_writes_no_report(run, tmp_path):
    _huge_run = _with_weights(run, tmp_path, _huge)
    with pytest.raises(ModelError, match='produced non-finite probabilities'): _evaluate(_huge_run)
    assert _left(_huge_run) == []
    nan_run = tmp_path/'nan_run'; shutil.copytree(run, nan_run)
    sd = load_file(nan_run/'model.safetensors'); _nan(sd); save_file(sd, nan_run/'model.safetensors')
    with pytest.raises(ModelError, match='the weights are broken'): _evaluate(nan_run)
    assert _left(nan_run) == []

def test_unreadable_image_is_in_the_atomic_report(run, trained, tmp_path):
    "skipped.csv is part of the report folder, written with it"
    data = tmp_path/'flat'; data.mkdir()
    for f in trained[2][:4]: shutil.copy(f, data)
    bad = sorted(data.iterdir())[0]; bad.write_text('not an image')
    rep, ws = _evaluate(run, data=data, out=tmp_path/'rep')
    assert pd.read_csv(tmp_path/'rep'/'skipped.csv').path.tolist() == [str(bad)]
    assert any('could not be read' in w for w in ws)
