"Hostile cases for the data layer: interrupted and concurrent writes of the synthetic set, bad Folds.csv files, bad images."
import os, signal, subprocess, sys, textwrap, time
from pathlib import Path
import numpy as np, pandas as pd, pytest
from PIL import Image
import breakhis_clf.data as data
from breakhis_clf.data import (UserError, make_synthetic_breakhis, breakhis_df, find_breakhis, is_synthetic, read_folds,
                               check_images, load_rgb, SYNTHETIC_MARKER)

SMALL = dict(n_patients=8, images_per_patient=1, size=(64, 48), magnifications=(40,), progress=False)

def _entries(folder:Path) -> list: return sorted(p.name for p in folder.iterdir())

def _complete(root:Path, n:int=8):
    "`root` holds a whole synthetic set of `n` readable images"
    df = breakhis_df(root)
    assert len(df) == n and is_synthetic(root) and (root/SYNTHETIC_MARKER).exists()
    assert check_images(df.path, size=None, progress=False).empty


# --- writing the synthetic set: all or nothing -------------------------------------------------------------------

@pytest.mark.parametrize('err', [KeyboardInterrupt(), OSError(28, 'No space left on device')], ids=['ctrl-c', 'disk-full'])
def test_write_cut_short_leaves_nothing(tmp_path, monkeypatch, err):
    "An error after a few images (Ctrl-C, a full disk) leaves no `BreaKHis_v1` and no temporary folder"
    save, saved = Image.Image.save, []
    def failing_save(self, fp, *args, **kwargs):
        if len(saved) == 3: raise err
        saved.append(fp); return save(self, fp, *args, **kwargs)
    monkeypatch.setattr(Image.Image, 'save', failing_save)
    dest = tmp_path/'data'
    with pytest.raises(type(err) if isinstance(err, KeyboardInterrupt) else UserError) as e: make_synthetic_breakhis(dest, **SMALL)
    assert len(saved) == 3 and all(Path(p).exists() is False for p in saved)  # three images were written, then removed
    if not isinstance(err, KeyboardInterrupt): assert str(dest) in str(e.value) and 'No space left on device' in str(e.value)
    assert _entries(dest) == []
    monkeypatch.setattr(Image.Image, 'save', save)
    _complete(make_synthetic_breakhis(dest, **SMALL))  # and the next run simply works


def test_real_ctrl_c_while_writing(tmp_path):
    "SIGINT to a process writing a full-size set: it stops, and neither half a set nor a temporary folder remains"
    dest = tmp_path/'data'
    code = f"from breakhis_clf.data import make_synthetic_breakhis; make_synthetic_breakhis({str(dest)!r}, n_patients=16, progress=False)"
    p = subprocess.Popen([sys.executable, '-c', code], stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while len(list(dest.glob('.BreaKHis_v1.partial-*/**/*.png'))) < 5:  # wait until it is well into the writing
            assert p.poll() is None and time.time() - t0 < 120, 'the writer ended or never started writing'
            time.sleep(0.02)
        p.send_signal(signal.SIGINT)
        err = p.communicate(timeout=60)[1]
    finally:
        if p.poll() is None: p.kill()
    assert p.returncode != 0 and 'KeyboardInterrupt' in err, err[-500:]
    assert _entries(dest) == []


WRITER = textwrap.dedent('''
    import os, sys, time
    from pathlib import Path
    import breakhis_clf.data as data
    dest, gate, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    rename = os.rename
    def rename_when_both_are_ready(src, dst):
        "Wait until both writers have written their whole set, then race for the name"
        (gate/str(os.getpid())).touch()
        t0 = time.time()
        while len(list(gate.iterdir())) < 2:
            if time.time() - t0 > 60: sys.exit('the other writer never got ready')
            time.sleep(0.01)
        rename(src, dst)
    os.rename = rename_when_both_are_ready
    try: root = data.make_synthetic_breakhis(dest, n_patients=n, images_per_patient=1, size=(64, 48), magnifications=(40,), progress=False)
    except data.UserError as e: sys.exit(f'UserError: {e}')
    print(root)
''')

def _race(tmp_path, ns):
    "Two processes writing synthetic sets of `ns` patients into the same folder at once: their results"
    dest, gate = tmp_path/'data', tmp_path/'gate'
    gate.mkdir()
    ps = [subprocess.Popen([sys.executable, '-c', WRITER, str(dest), str(gate), str(n)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True) for n in ns]
    try: outs = [p.communicate(timeout=240) for p in ps]
    finally:
        for p in ps:
            if p.poll() is None: p.kill()
    assert len(list(gate.iterdir())) == 2  # both had written a whole set when they renamed
    return dest, [(p.returncode, out.strip(), err) for p,(out,err) in zip(ps, outs)]

def test_two_writers_of_the_same_set_both_succeed(tmp_path):
    "Two runs writing the same set at once (two `breakhis-clf train` without --data) both get the one complete copy"
    dest, res = _race(tmp_path, [8, 8])
    assert [rc for rc,_,_ in res] == [0, 0], [err[-800:] for _,_,err in res]
    assert res[0][1] == res[1][1] == str(dest/'BreaKHis_v1')
    assert _entries(dest) == ['BreaKHis_v1']  # the loser's temporary folder is gone
    _complete(dest/'BreaKHis_v1')

def test_two_writers_of_different_sets_never_mix(tmp_path):
    "Two runs writing different sets into one folder: one wins, the other is refused in one line; no mixed set"
    dest, res = _race(tmp_path, [8, 12])
    assert sorted(rc != 0 for rc,_,_ in res) == [False, True], res
    (rc_ok, out, _), (_, _, err) = sorted(res, key=lambda r: r[0] != 0)
    assert out == str(dest/'BreaKHis_v1') and 'UserError' in err and 'nothing was overwritten' in err, err[-800:]
    assert _entries(dest) == ['BreaKHis_v1']
    winner = 8 if res[0][0] == 0 else 12
    _complete(dest/'BreaKHis_v1', winner)


def test_leftover_partial_folder_is_not_data_and_does_not_block(tmp_path, synth_root):
    "A hidden `.BreaKHis_v1.partial-*` left by a killed writer (even a finished one, marker included) is ignored"
    dest = tmp_path/'data'
    left = dest/'.BreaKHis_v1.partial-xyz'
    for p in breakhis_df(synth_root).path[:5]:
        (left/Path(p).relative_to(synth_root)).parent.mkdir(parents=True, exist_ok=True)
        (left/Path(p).relative_to(synth_root)).write_bytes(Path(p).read_bytes())
    (left/SYNTHETIC_MARKER).write_text('synthetic')
    nested = dest/'.cache'/'BreaKHis_v1'  # any hidden folder: not looked in
    nested.mkdir(parents=True)
    assert find_breakhis(dest) is None and not is_synthetic(dest)
    with pytest.raises(UserError, match='no BreakHis images'): breakhis_df(dest)
    root = make_synthetic_breakhis(dest, **SMALL)
    assert root == dest/'BreaKHis_v1' and find_breakhis(dest) == root
    assert len(breakhis_df(dest)) == 8  # the leftover's 5 images are not read, from the parent either
    _complete(root)
    assert len(list(left.rglob('*.png'))) == 5  # someone else's folder (maybe a live writer's) is left alone


def test_an_existing_set_is_refused_and_kept(tmp_path):
    "Called directly on a folder that already holds a set: refused, nothing touched, no temporary folder left"
    root = make_synthetic_breakhis(tmp_path, **SMALL)
    before = {p: p.stat().st_mtime_ns for p in root.rglob('*')}
    with pytest.raises(UserError, match='already exists'): make_synthetic_breakhis(tmp_path, **SMALL)
    assert {p: p.stat().st_mtime_ns for p in root.rglob('*')} == before and _entries(tmp_path) == ['BreaKHis_v1']


def test_empty_target_folder_is_filled(tmp_path):
    (tmp_path/'BreaKHis_v1').mkdir()
    _complete(make_synthetic_breakhis(tmp_path, **SMALL))
    assert _entries(tmp_path) == ['BreaKHis_v1']


def test_published_set_has_ordinary_permissions(tmp_path):
    "The renamed temporary folder is readable by others like any folder made with `mkdir` (not 0700)"
    umask = os.umask(0); os.umask(umask)
    root = make_synthetic_breakhis(tmp_path, **SMALL)
    assert root.stat().st_mode & 0o777 == 0o777 & ~umask


def test_marker_is_written_last(tmp_path, monkeypatch):
    "The marker that makes a set complete is written after the last image, inside the temporary folder"
    events, save, write = [], Image.Image.save, Path.write_text
    monkeypatch.setattr(Image.Image, 'save', lambda self, fp, *a, **k: (events.append(('png', Path(fp))), save(self, fp, *a, **k))[1])
    monkeypatch.setattr(Path, 'write_text', lambda self, *a, **k: (events.append(('marker', self)), write(self, *a, **k))[1])
    root = make_synthetic_breakhis(tmp_path, **SMALL)
    assert [k for k,_ in events] == ['png']*8 + ['marker']
    tmp = events[-1][1].parent  # everything was written under the temporary name, then renamed
    assert tmp.name.startswith('.BreaKHis_v1.partial-') and tmp.parent == tmp_path and not tmp.exists()
    assert all(tmp in p.parents for _,p in events[:-1])


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, 'geteuid') else True, reason='root ignores folder permissions')
def test_read_only_destination(tmp_path):
    dest = tmp_path/'ro'
    dest.mkdir(); dest.chmod(0o555)
    try:
        with pytest.raises(UserError, match=f'{dest}: cannot write'): make_synthetic_breakhis(dest, **SMALL)
    finally: dest.chmod(0o755)


def test_destination_that_is_a_file(tmp_path):
    (tmp_path/'f').write_text('x')
    with pytest.raises(UserError, match='not a folder'): make_synthetic_breakhis(tmp_path/'f', **SMALL)


# --- Folds.csv that is not one ------------------------------------------------------------------------------------

FOLDS_HEAD = 'fold,mag,grp,filename\n'

@pytest.mark.parametrize('name,content,problem', [
    ('empty.csv', b'', 'empty file (0 bytes)'),
    ('binary.csv', bytes(range(256))*8, 'binary file'),
    ('image.csv', b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x02\xbc', 'binary file'),
    ('latin1.csv', (FOLDS_HEAD + '1,40,train,caf\xe9.png\n').encode('latin-1'), 'not UTF-8 text'),
    ('blank.csv', b'\n\n\n', 'not a readable CSV'),
    ('quote.csv', (FOLDS_HEAD + '1,40,train,"a.png\n').encode(), 'not a readable CSV'),
    ('other.csv', b'a,b\n1,2\n', 'missing columns'),
    ('semicolons.csv', b'fold;mag;grp;filename\n1;40;train;a.png\n', 'missing columns'),
    ('header.csv', FOLDS_HEAD.encode(), 'no rows'),
    ('hole.csv', (FOLDS_HEAD + '1,40,train,a.png\n1,40,,b.png\n').encode(), 'row 2 has no grp'),
    ('fold.csv', (FOLDS_HEAD + '1,40,train,a.png\none,40,test,b.png\n').encode(), "whole numbers (row 2: 'one')"),
    ('grp.csv', (FOLDS_HEAD + '1,40,valid,a.png\n').encode(), "train or test (found 'valid')"),
])
def test_bad_folds_csv_is_one_line(tmp_path, name, content, problem):
    "Every broken Folds.csv gives one `UserError` line naming the file and the problem, never a pandas traceback"
    (tmp_path/name).write_bytes(content)
    with pytest.raises(UserError) as e: read_folds(tmp_path/name)
    msg = str(e.value)
    assert msg.startswith(f'{tmp_path/name}: ') and problem in msg and '\n' not in msg, msg


def test_folds_csv_that_is_a_folder_or_missing(tmp_path):
    (tmp_path/'Folds.csv').mkdir()
    with pytest.raises(UserError, match='Folds.csv: is a folder'): read_folds(tmp_path/'Folds.csv')
    with pytest.raises(FileNotFoundError, match='nope.csv'): read_folds(tmp_path/'nope.csv')


def test_folds_csv_with_a_bom_and_float_folds_reads(tmp_path):
    "A Folds.csv saved by a spreadsheet (byte-order mark, folds as 1.0) is still read"
    (tmp_path/'F.csv').write_bytes(('\ufeff' + FOLDS_HEAD + '1.0,40,test,x/SOB_B_A-14-22549AB-40-001.png\n').encode())
    f = read_folds(tmp_path/'F.csv')
    assert f.fold.tolist() == [1] and f.fname.tolist() == ['SOB_B_A-14-22549AB-40-001.png']


# --- bad images with good names -----------------------------------------------------------------------------------

def test_check_images_names_each_bad_breakhis_file(tmp_path, synth_root):
    "Files with valid BreakHis names that are not usable images: one row each, naming the file and the problem"
    df = breakhis_df(synth_root)
    good = [Path(p) for p in df.path[:3]]
    raw = good[0].read_bytes()
    bad = {'SOB_B_A-14-22549AB-40-001.png': (raw[:len(raw)//2], 'truncated'),
           'SOB_B_A-14-22549AB-40-002.png': (b'', 'empty file (0 bytes)'),
           'SOB_B_A-14-22549AB-40-003.png': (b'<html>404 Not Found</html>', 'not an image'),
           'SOB_B_A-14-22549AB-40-004.png': (np.random.default_rng(0).bytes(5000), 'not an image'),
           'SOB_B_A-14-22549AB-40-005.png': (raw[:40] + bytes(len(raw) - 40), 'corrupt PNG image'),  # a PNG header, then zeros
           'SOB_B_A-14-22549AB-40-007.png': (raw[:len(raw)//2] + b'\xff'*200 + raw[len(raw)//2 + 200:], 'corrupt image')}  # garbage inside
    for name,(content,_) in bad.items(): (tmp_path/name).write_bytes(content)
    (tmp_path/'SOB_B_A-14-22549AB-40-006.png').mkdir()  # a folder with an image's name
    paths = good + [tmp_path/n for n in bad] + [tmp_path/'SOB_B_A-14-22549AB-40-006.png']
    probs = check_images(paths, size=None, progress=False)
    got = dict(zip(probs.path.map(lambda p: Path(p).name), probs.problem))
    assert set(got) == set(bad) | {'SOB_B_A-14-22549AB-40-006.png'}, got  # every bad file once, no good one
    for name,(_,problem) in bad.items(): assert problem in got[name], (name, got[name])
    assert 'folder' in got['SOB_B_A-14-22549AB-40-006.png']
    for name in bad:  # and loading it says the same, naming the file
        with pytest.raises(UserError, match=name): load_rgb(tmp_path/name)


def test_check_images_opens_each_file_once(monkeypatch, synth_root):
    "Checking decodes every image fully, once (it runs over the whole dataset before training)"
    paths = list(breakhis_df(synth_root).path[:10])
    opened, open_ = [], Image.open
    monkeypatch.setattr(data.Image, 'open', lambda fp, *a, **k: (opened.append(fp), open_(fp, *a, **k))[1])
    assert check_images(paths, size=(175, 115), progress=False).empty
    assert sorted(map(str, opened)) == sorted(paths)
