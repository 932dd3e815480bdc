"""covfast: find and outline COVID-19 infection in chest X-rays with fastai."""

import warnings

__version__ = "0.1.0"

# torch 2.14 deprecates torch.jit.script, which fastai calls at import: noise on every command's stderr.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
