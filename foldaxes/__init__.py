"""Fold named axes into the batch axis around any module, with einops notation.

Examples:
    >>> import torch, foldaxes
    >>> enc = foldaxes.Distribute("b t v c h w -> (b t v) c h w", torch.nn.Conv2d(3, 8, 3))
    >>> enc(torch.randn(2, 4, 3, 3, 16, 16)).shape
    torch.Size([2, 4, 3, 8, 14, 14])
"""

import warnings as _warnings

# torch warns when it is imported without numpy (pytorch/pytorch#115638). foldaxes never needs numpy, and the
# warning would be the first thing `python -m foldaxes` prints, so it is silenced for this one import of torch.
with _warnings.catch_warnings():
    _warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)
    import torch as _torch  # noqa: F401

from ._errors import FoldError as FoldError
from ._explain import Explanation as Explanation
from ._explain import explain as explain
from ._fold import FoldSpec as FoldSpec
from ._fold import distribute as distribute
from ._fold import fold as fold
from ._fold import unfold as unfold
from ._modules import Distribute as Distribute
from ._modules import TimeDistributed as TimeDistributed

__version__ = "0.1.0"

__all__ = [
    "Distribute",
    "Explanation",
    "FoldError",
    "FoldSpec",
    "TimeDistributed",
    "distribute",
    "explain",
    "fold",
    "unfold",
]
