"""Everything a notebook needs: `from covfast.all import *`."""

from .config import *  # noqa: F401,F403
from .spec import *  # noqa: F401,F403
from .data import *  # noqa: F401,F403
from .dataset import *  # noqa: F401,F403
from .errors import *  # noqa: F401,F403
from .synth import *  # noqa: F401,F403
from .outputs import *  # noqa: F401,F403
from .models import *  # noqa: F401,F403
from .decision import *  # noqa: F401,F403
from .losses import *  # noqa: F401,F403
from .metrics import *  # noqa: F401,F403
from .learner import *  # noqa: F401,F403
from .runs import *  # noqa: F401,F403
from .callbacks import *  # noqa: F401,F403
from .train import *  # noqa: F401,F403
from .inference import *  # noqa: F401,F403
from .predict import *  # noqa: F401,F403
from .evaluate import *  # noqa: F401,F403
from .calibrate import *  # noqa: F401,F403
from .cases import *  # noqa: F401,F403
from .figures import *  # noqa: F401,F403
from .pages import *  # noqa: F401,F403
from .report import *  # noqa: F401,F403
from .compare import *  # noqa: F401,F403
from .demo import *  # noqa: F401,F403
