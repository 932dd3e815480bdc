"""Everything a notebook needs: `from covfast.all import *`."""

from .config import *  # noqa: F401,F403
from .data import *  # noqa: F401,F403
from .dataset import *  # noqa: F401,F403
from .errors import *  # noqa: F401,F403
from .synth import *  # noqa: F401,F403
