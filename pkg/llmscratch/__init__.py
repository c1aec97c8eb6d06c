"""llmscratch: the companion package of *Build Large Models from Scratch*.

Every chapter of the book builds a piece by hand and then switches to the tested version that lives here.
Modules are named by what they do (``tokenizers``, ``data``, ``models.gpt``, ``generate``, ``train``, ...);
see the README for the map from chapters to modules.
"""

__version__ = "0.1.0"

from .utils import autocast_dtype, env_report, get_device, seed_everything  # noqa: E402

__all__ = ["__version__", "autocast_dtype", "env_report", "get_device", "seed_everything"]
