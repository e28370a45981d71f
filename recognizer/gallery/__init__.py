from .gallery import *  # noqa: F401,F403
from .gallery import _flock  # noqa: F401
