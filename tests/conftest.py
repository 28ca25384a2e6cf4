"Shared pytest fixtures: the real BreakHis sample beside the project, and small synthetic datasets."
import os
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = Path(os.environ.get('BREAKHIS_SAMPLE', REPO.parent/'shared'/'breakhis-sample'))

@pytest.fixture(scope='session')
def sample_root():
    "The 23 real BreakHis images in `../shared/breakhis-sample` (skips when absent: a user's clone lacks it)"
    if not SAMPLE.exists(): pytest.skip(f"real BreakHis sample not found at {SAMPLE} (only CI and developers have it)")
    return SAMPLE

@pytest.fixture(scope='session')
def synth_root(tmp_path_factory):
    "A small synthetic BreakHis (16 patients, 2 images per patient and magnification, 175x115 px)"
    from breakhis_clf.data import make_synthetic_breakhis
    return make_synthetic_breakhis(tmp_path_factory.mktemp('synth'), n_patients=16, images_per_patient=2,
                                   size=(175, 115), progress=False)
