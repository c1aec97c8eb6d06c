"""Data sets of the course, and what is done to text before a model sees it: one module per job.

- :mod:`.registry`: every file the course reads (official source, sha256), found by :func:`fetch` in this order:
  an explicit path, ``$LLMSCRATCH_DATA/<relpath>``, the user cache, then a verified atomic download.
  A file found on disk is checked too (see the module's docstring for the in-process memo and its opt-out).
- :mod:`.loaders`: loaders that return ready objects (``load_imdb``, ``load_the_verdict``, ...) and chapter 1's
  sliding-window sampling (``sliding_windows``, ``GPTDataset``, ``create_dataloader``).
- :mod:`.cleaning`: small text-cleaning steps composed in a :class:`~.cleaning.Pipeline` that counts changes.
- :mod:`.dedup`: exact and near-duplicate (MinHash + LSH) detection, and removing test texts from a corpus.
- :mod:`.augment`: EDA (Wei & Zou 2019), AEDA, back-translation and WordNet access.
- :mod:`.word2vec`: skip-gram with negative sampling (Mikolov et al. 2013).

Every public name of the former single module ``llmscratch.data`` is still importable from here.
"""

from __future__ import annotations

# time and the private helpers are re-exported because tests patch them through this namespace
# (data.time.sleep, data._VERIFIED, data._download, data._build_imdb).
from . import registry  # noqa: F401
from .registry import *  # noqa: F401,F403
from .registry import (  # noqa: F401
    ARCHIVES,
    CACHE_ENV,
    DATA_ENV,
    OFFLINE_ENV,
    VERIFY_ENV,
    Archive,
    _VERIFIED,
    _build_imdb,
    _build_mnist_npz,
    _build_sms,
    _download,
    _entry,
    _materialize,
    _offline,
    time,
)
from .registry import __all__ as _registry_all
from .loaders import *  # noqa: F401,F403
from .loaders import __all__ as _loaders_all
from . import cleaning  # noqa: F401
from .cleaning import *  # noqa: F401,F403
from .cleaning import __all__ as _cleaning_all
from . import augment, dedup  # noqa: F401,E402  (their heavy imports, nltk and transformers, are lazy)
from .dedup import *  # noqa: F401,F403
from .dedup import __all__ as _dedup_all
from .augment import *  # noqa: F401,F403
from .augment import __all__ as _augment_all
from . import word2vec  # noqa: F401,E402
from .word2vec import *  # noqa: F401,F403
from .word2vec import __all__ as _word2vec_all

__all__ = [*_registry_all, *_loaders_all, *_cleaning_all, *_dedup_all, *_augment_all, *_word2vec_all]
