"""covfast: find and outline COVID-19 infection in chest X-rays with fastai."""

import warnings

__version__ = "0.2.0"

# torch 2.14 deprecates torch.jit.script, which fastai calls at import: noise on every command's stderr.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
# fastai 2.8.12's lr_find suggestions hand fastai tensors to np.interp, which NumPy 2 warns about on every call.
warnings.filterwarnings("ignore", message=r"__array_wrap__ must accept context and return_scalar", category=DeprecationWarning)
# timm imports tqdm.auto, which in a notebook kernel without ipywidgets warns "IProgress not found" at import;
# covfast's progress bars are fastai's (fastprogress), which need no widgets.
warnings.filterwarnings("ignore", message=r"IProgress not found")
