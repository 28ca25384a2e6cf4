__version__ = "0.1.0"

import warnings as _warnings
# fastai 2.8 calls torch.jit.script at import, which torch 2.14 deprecates: a warning users can do nothing about
_warnings.filterwarnings('ignore', message=r'.*torch\.jit\.script.*', category=FutureWarning)
# timm (imported by fastai) asks tqdm for Jupyter widgets that a plain kernel lacks: a warning with no consequence here
_warnings.filterwarnings('ignore', message=r'.*IProgress not found.*')
