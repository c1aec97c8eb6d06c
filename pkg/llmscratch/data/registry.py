"""The registry of data files: where each comes from, how it is checked, and how it is found or downloaded.

Every file the course reads is in :data:`REGISTRY`, with its official source and its sha256. A file is found by
:func:`fetch` in this order:

1. an explicit path passed by the caller (``fetch("imdb/imdb_train.csv.gz", path=...)``);
2. ``$LLMSCRATCH_DATA/<relpath>`` (CI and the tests point this at the shared data folder);
3. the user cache, ``$LLMSCRATCH_CACHE`` or ``~/.cache/llmscratch/<relpath>``;
4. a download into the cache: verified against the sha256, written atomically (a temporary file renamed into
   place), so an interrupted or corrupted download never leaves a file that looks valid.

A file found in steps 1-3 is checked too; a mismatch raises :class:`ChecksumError` naming the file and the fix.
Within one process a file that passed is remembered by (path, inode, size, mtime, ctime), so loaders can call
:func:`fetch` often without re-hashing 25 MB each time. Any write to the file changes its ctime (which, unlike the
mtime, cannot be set back), so a file corrupted later is hashed again and caught. The trade: a change within the
same clock tick as the verification (a few milliseconds) could go unseen; set ``$LLMSCRATCH_VERIFY=always``
(or call ``verify(..., memo=False)``) to hash on every call.
On-disk forms are those of the shared data folder: ``gpt2/encoder.json``, ``gpt2/vocab.bpe``,
``text/the-verdict.txt``, ``imdb/imdb_{train,test,unsup}.csv.gz`` (columns text,label), ``mnist/*-idx?-ubyte.gz``,
``mnist/mnist.npz``, ``sms_spam/SMSSpamCollection.tsv`` and ``nltk_data/corpora/wordnet/*`` (WordNet 3.0).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import random
import re
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..utils import atomic_write

__all__ = [
    "DataFile",
    "REGISTRY",
    "ChecksumError",
    "DataNotFoundError",
    "fetch",
    "verify",
    "data_home",
    "cache_dir",
    "file_sha256",
    "content_sha256",
    "read_idx",
    "imdb_csv_from_archive",
]

DATA_ENV = "LLMSCRATCH_DATA"
CACHE_ENV = "LLMSCRATCH_CACHE"
OFFLINE_ENV = "LLMSCRATCH_OFFLINE"
VERIFY_ENV = "LLMSCRATCH_VERIFY"


class ChecksumError(RuntimeError):
    """A data file's content does not match the registry's sha256."""


class DataNotFoundError(FileNotFoundError):
    """A data file is not on disk and could not be downloaded."""


# --------------------------------------------------------------------------------------------------------------
# Archives that several files are built from, and the builders that turn them into the on-disk form
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Archive:
    """An official download that one or more registry files are extracted or converted from."""

    filename: str
    urls: tuple[str, ...]
    sha256: str


ARCHIVES: dict[str, Archive] = {
    "aclImdb": Archive(
        filename="aclImdb_v1.tar.gz",
        urls=("https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",),
        sha256="c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe",
    ),
    "sms_spam": Archive(
        filename="sms_spam_collection.zip",
        urls=("https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",),
        sha256="1587ea43e58e82b14ff1f5425c88e17f8496bfcdb67a583dbff9eefaf9963ce3",
    ),
    # What nltk.download("wordnet") fetches: WordNet 3.0's dict files under wordnet/ (10,775,600 bytes; NLTK
    # publishes only an md5, so this sha256 is of the copy on nltk_data's gh-pages branch as of 2026).
    "wordnet": Archive(
        filename="wordnet.zip",
        urls=("https://raw.githubusercontent.com/nltk/nltk_data/gh-pages/packages/corpora/wordnet.zip",),
        sha256="cbda5ea6eef7f36a97a43d4a75f85e07fccbb4f23657d27b4ccbc93e2646ab59",
    ),
}

_IMDB_NAME = re.compile(r"^aclImdb/(train|test)/(pos|neg|unsup)/(\d+)_(\d+)\.txt$")


def imdb_csv_from_archive(tar_path: str | Path, split: str) -> bytes:
    """Convert the official ``aclImdb_v1.tar.gz`` into the CSV text of one split (uncompressed bytes).

    The processing is exactly that of the shared data folder (see its SOURCE.md): raw review text, label from
    the folder (pos 1, neg 0, unsup -1); train/test rows sorted by (label, file id) then shuffled with
    ``random.Random(0)``; unsup in file-id order. Written with the ``csv`` module (RFC 4180, CRLF).
    """
    if split not in ("train", "test", "unsup"):
        raise ValueError(f"split must be 'train', 'test' or 'unsup', got {split!r}")
    folder, kinds = ("train", ("unsup",)) if split == "unsup" else (split, ("pos", "neg"))
    rows: list[tuple[int, int, str]] = []
    with tarfile.open(tar_path, "r:gz") as tar:
        for member in tar:
            m = _IMDB_NAME.match(member.name)
            if not m or m.group(1) != folder or m.group(2) not in kinds:
                continue
            label = {"pos": 1, "neg": 0, "unsup": -1}[m.group(2)]
            text = tar.extractfile(member).read().decode("utf-8")
            rows.append((label, int(m.group(3)), text))
    rows.sort(key=lambda r: (r[0], r[1]))
    if split != "unsup":
        random.Random(0).shuffle(rows)
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(["text", "label"])
    writer.writerows((text, label) for label, _, text in rows)
    return buf.getvalue().encode("utf-8")


def _gzip_bytes(data: bytes, name: str) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(filename=name, mode="wb", compresslevel=9, fileobj=out, mtime=0) as gz:
        gz.write(data)
    return out.getvalue()


def _build_imdb(split: str) -> Callable[[Path], bytes]:
    def build(archive_path: Path) -> bytes:
        return _gzip_bytes(imdb_csv_from_archive(archive_path, split), f"imdb_{split}.csv")

    return build


def _build_sms(archive_path: Path) -> bytes:
    with zipfile.ZipFile(archive_path) as zf:
        return zf.read("SMSSpamCollection")


def _build_wordnet(name: str) -> Callable[[Path], bytes]:
    def build(archive_path: Path) -> bytes:
        with zipfile.ZipFile(archive_path) as zf:
            try:
                return zf.read(f"wordnet/{name}")
            except KeyError:
                raise DataNotFoundError(f"{archive_path} has no wordnet/{name}: it is not NLTK's wordnet.zip; "
                                        "delete it and run again to download a fresh copy") from None

    return build


def _build_mnist_npz(_: Path | None) -> bytes:
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        arrays[f"x_{split}"] = read_idx(fetch(f"mnist/{prefix}-images-idx3-ubyte.gz"))
        arrays[f"y_{split}"] = read_idx(fetch(f"mnist/{prefix}-labels-idx1-ubyte.gz"))
    out = io.BytesIO()
    np.savez_compressed(out, **arrays)
    return out.getvalue()


# --------------------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataFile:
    """One file of a data set in its on-disk form.

    ``sha256`` is the hash of the file's bytes. Files that are *built* (converted from an archive) cannot be
    byte-identical everywhere (gzip and zip record timestamps), so they also carry ``content_sha256``: the hash
    of what :func:`content_sha256` reads (the decompressed bytes of a ``.gz``, the arrays of an ``.npz``).
    A file passes :func:`verify` when either hash matches.
    """

    relpath: str
    sha256: str
    urls: tuple[str, ...] = ()
    archive: str | None = None
    build: Callable[[Path | None], bytes] | None = field(default=None, compare=False, repr=False)
    content_sha256: str | None = None
    size: int | None = None
    description: str = ""


_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",  # the mirror torchvision uses
    "https://yann.lecun.com/exdb/mnist/",
)
_GPT2_BASE = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"

REGISTRY: dict[str, DataFile] = {
    f.relpath: f
    for f in [
        DataFile(
            "gpt2/encoder.json",
            "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
            urls=(_GPT2_BASE + "encoder.json",),
            size=1042301,
            description="GPT-2 BPE vocabulary: token string -> id (OpenAI)",
        ),
        DataFile(
            "gpt2/vocab.bpe",
            "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
            urls=(_GPT2_BASE + "vocab.bpe",),
            size=456318,
            description="GPT-2 BPE merges, in rank order (OpenAI)",
        ),
        DataFile(
            "text/the-verdict.txt",
            "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
            urls=(
                "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/01_main-chapter-code/the-verdict.txt",
            ),
            size=20479,
            description="Edith Wharton, 'The Verdict' (1908, public domain), the short story Raschka's book trains on",
        ),
        *[
            DataFile(
                f"imdb/imdb_{split}.csv.gz",
                sha,
                archive="aclImdb",
                build=_build_imdb(split),
                content_sha256=content,
                size=size,
                description=f"IMDB reviews (Maas et al. 2011), {split} split, columns text,label",
            )
            for split, sha, content, size in [
                (
                    "train",
                    "344c3ffc772f052df616975b084df824dbde90bb5980a2fd7cb77e3a0512027a",
                    "335d1a3414019bf0cb3d6b063d91da4dabac27f972b75cfde591cfa12a78727a",
                    13372832,
                ),
                (
                    "test",
                    "05f121d5ee6c4e3e937393833078e08dfd31c561a497365d7699eaea7354a6ee",
                    "fdbec0f9e88644298bc074959d84eca58a11bb910aeb157acced9d4af769a908",
                    13055235,
                ),
                (
                    "unsup",
                    "e470a6206687c0751f75117d1f994924ec6857990d1d9a27abe1453c93e088ff",
                    "be6fb05cffe1f49fc938d4f4efb99a1e6abd17272a939dfb60236e67942919d0",
                    25653843,
                ),
            ]
        ],
        *[
            DataFile(f"mnist/{name}", sha, urls=tuple(m + name for m in _MNIST_MIRRORS), size=size,
                     description="MNIST (LeCun et al.), original IDX file")
            for name, sha, size in [
                ("train-images-idx3-ubyte.gz", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422),
                ("train-labels-idx1-ubyte.gz", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881),
                ("t10k-images-idx3-ubyte.gz", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877),
                ("t10k-labels-idx1-ubyte.gz", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542),
            ]
        ],
        DataFile(
            "mnist/mnist.npz",
            "06af5dfe73b70e3bc1c36439982b18a8d76803db9b544f6fdf838a37fbb01b64",
            build=_build_mnist_npz,
            content_sha256="0e2222d727e91bf42cf54bdbbd52204e17f8fe7870f71932691dc64761aa12de",
            size=11490519,
            description="MNIST as x_train/y_train/x_test/y_test uint8 arrays, built from the IDX files",
        ),
        DataFile(
            "sms_spam/SMSSpamCollection.tsv",
            "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d",
            archive="sms_spam",
            build=_build_sms,
            size=477907,
            description="SMS Spam Collection v.1 (UCI), label<TAB>message per line",
        ),
        # WordNet 3.0 in NLTK's layout (the data folder's copy comes from Debian's wordnet-base; see its
        # SOURCE.md). Online, augment.wordnet() unpacks NLTK's pinned zip and checks the database by content,
        # since a file of another packaging may differ from these in its license header.
        *[
            DataFile(f"nltk_data/corpora/wordnet/{name}", sha, archive="wordnet", build=_build_wordnet(name),
                     size=size, description="WordNet 3.0 (Princeton), NLTK's corpora/wordnet layout")
            for name, sha, size in [
                ("LICENSE", "f461bac9a5a1810c4fe1e3cec0a980f79406e3a8c1c147f3874979fb00e2cc0e", 2105),
                ("adj.exc", "8824cc24bbedd797b9702316b27f07cd4c2b76b629539f0a1276f03926758016", 23019),
                ("adv.exc", "e7291461b629abfe63301bbe1998cee09fd575ed7107abd7ea9763adb05bf0a8", 85),
                ("cntlist.rev", "a198580b8f705fa02797bba8b13e5cbe4a9f9f40cb1697e774c7fc6a5865b035", 911244),
                ("data.adj", "c89120dfc1f046ddff4a631bf9b7e9fa1a36b5e86565a23bf82dbe14f30b88a7", 3155427),
                ("data.adv", "444a63bf3955080ab7524f5079cfc07ff9bc682cb98bdb1db73b0fb9829f1139", 516696),
                ("data.noun", "fea17d2f9656611334eac790e5d69e47645fa180c4aa481fb4cd9b3520754ca2", 15300280),
                ("data.verb", "adcf43e35b581e8036d8b5a52d63d9cd3d3b4870b2720d3c03c799df44777bc2", 2772517),
                ("index.adj", "c9865d7b4d1f805bdef82ccdcea5282436e23083e6f6f1b33e716327c4eda810", 824127),
                ("index.adv", "6f5465ed5758fe9c8a2f7ec17b1300f3aa875756c70ff7cba162f7e71bcf88ea", 162816),
                ("index.noun", "a490d99d93d017bf4822fe2f0ffa51fd73911ce271dc7535fade21f8814b5a04", 4786655),
                ("index.sense", "ce997000ec806318ff1dfadf77d314ac527358e127d7bbe3d1f4e83a1c5c1c2b", 7294043),
                ("index.verb", "e2ac24816c3a8289dcb72aaa9cf8db81fdf25ec34d792bfc96ac5b7a20c8b4ae", 523980),
                ("lexnames", "c871b6797d2109f563f7a162b64e8ebf18f6f42d00918572846034c7f393a214", 800),
                ("noun.exc", "2b5d675c380b39ecf595af9fa9d4e7feb1d58c643b0bff08c40ed5bfe41fab7a", 38301),
                ("sentidx.vrb", "129e267389fe88ea413b90addda3fcfb2a42b009339298b60711676b2b5d9bf0", 73166),
                ("sents.vrb", "6fb59507c96c4aeb267e016ce4a654a1791a438815de98c52e7975df20db15c9", 5319),
                ("verb.exc", "dbbcf9a601b2d77e934e413b91d90e88ec7f933a8b77cfc00602a923b891b42c", 38033),
            ]
        ],
    ]
}


# --------------------------------------------------------------------------------------------------------------
# Hashing and verification
# --------------------------------------------------------------------------------------------------------------


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def content_sha256(path: str | Path) -> str:
    """sha256 of a file's *content*: the decompressed bytes of a ``.gz``, the named arrays of an ``.npz``."""
    path = Path(path)
    h = hashlib.sha256()
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    elif path.suffix == ".npz":
        with np.load(path) as arrays:
            for key in sorted(arrays.files):
                a = arrays[key]
                h.update(key.encode())
                h.update(str(a.dtype).encode())
                h.update(str(a.shape).encode())
                h.update(np.ascontiguousarray(a).tobytes())
    else:
        return file_sha256(path)
    return h.hexdigest()


# Verifying a 25 MB file costs ~0.1 s; loaders call fetch often, so remember files already verified (see the
# module docstring for what the key catches and the opt-out).
_VERIFIED: dict[tuple, str] = {}


def verify(path: str | Path, entry: DataFile | str, memo: bool = True) -> Path:
    """Check ``path`` against a registry entry; return the path, or raise :class:`ChecksumError`.

    ``memo=False`` (or ``$LLMSCRATCH_VERIFY=always``) hashes the file even if it passed earlier in this process.
    """
    entry = REGISTRY[entry] if isinstance(entry, str) else entry
    path = Path(path)
    st = path.stat()
    # ctime changes on every write and cannot be set back by utime, unlike mtime; a replaced file has a new inode.
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    memo = memo and os.environ.get(VERIFY_ENV, "").lower() != "always"
    if memo and _VERIFIED.get(key) == entry.relpath:
        return path
    ok = file_sha256(path) == entry.sha256
    if not ok and entry.content_sha256 is not None:
        try:
            ok = content_sha256(path) == entry.content_sha256
        except (OSError, EOFError, ValueError, zipfile.BadZipFile):
            ok = False
    if not ok:
        raise ChecksumError(
            f"{path} does not match the checksum of '{entry.relpath}' (expected sha256 {entry.sha256[:16]}...). "
            "The file is corrupted or is another version: delete it and run again to download a fresh copy, "
            f"or point ${DATA_ENV} at a folder with the right file."
        )
    _VERIFIED[key] = entry.relpath
    return path


# --------------------------------------------------------------------------------------------------------------
# Resolution: explicit path -> $LLMSCRATCH_DATA -> cache -> download
# --------------------------------------------------------------------------------------------------------------


def data_home() -> Path | None:
    """The folder named by ``$LLMSCRATCH_DATA``, or None when unset."""
    value = os.environ.get(DATA_ENV)
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """The user cache folder: ``$LLMSCRATCH_CACHE``, else ``$XDG_CACHE_HOME/llmscratch``, else ``~/.cache/llmscratch``."""
    if value := os.environ.get(CACHE_ENV):
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "llmscratch"


def _entry(relpath: str) -> DataFile:
    try:
        return REGISTRY[relpath]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise KeyError(f"unknown data file {relpath!r}; known files: {known}") from None


def _atomic_write(dest: Path, data: bytes | None = None, src: Path | None = None) -> None:
    """Write ``data`` (or move ``src``) to ``dest`` atomically (see :func:`llmscratch.utils.atomic_write`)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src is not None:
        os.replace(src, dest)
        return
    with atomic_write(dest) as fh:
        fh.write(data)


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").lower() in ("1", "true", "yes")


def _not_found(relpath: str, reason: str) -> DataNotFoundError:
    """The error for a file that is nowhere on disk: what was asked for, where it was looked for, the fixes."""
    home = data_home()
    looked = (f"${DATA_ENV} = {home} (no {home / relpath})" if home is not None
              else f"${DATA_ENV} (unset)")
    return DataNotFoundError(
        f"'{relpath}' is not on disk and {reason}. Looked in: {looked}; the cache {cache_dir() / relpath}. "
        f"Fix: set ${DATA_ENV} to a data folder that holds {relpath} (CI uses the shared data folder), pass "
        f"path= to the loader, or go online and unset ${OFFLINE_ENV} to download it into the cache.")


def _download(urls: Iterable[str], dest: Path, sha256: str | None, retries: int = 2, timeout: float = 60.0) -> Path:
    """Download the first URL that works into ``dest``; verify sha256 before the file appears under its name."""
    if _offline():
        raise DataNotFoundError(f"{dest.name} is not on disk and ${OFFLINE_ENV} forbids downloads; set "
                                f"${DATA_ENV} to a data folder that holds it")
    errors = []
    for url in urls:
        for attempt in range(retries + 1):
            try:
                # atomic_write renames into place only when the block finishes: a failed or corrupted download
                # (the ChecksumError below) leaves no file under dest's name.
                with atomic_write(dest) as out:
                    h = hashlib.sha256()
                    request = urllib.request.Request(url, headers={"User-Agent": "llmscratch-data/1.0"})
                    with urllib.request.urlopen(request, timeout=timeout) as resp:
                        while block := resp.read(1 << 20):
                            h.update(block)
                            out.write(block)
                    if sha256 is not None and h.hexdigest() != sha256:  # None: checked by content later
                        raise ChecksumError(
                            f"download of {url} has sha256 {h.hexdigest()[:16]}..., expected {sha256[:16]}...; "
                            "nothing was cached. The server may have changed the file: report it, or place a "
                            f"verified copy under ${DATA_ENV}."
                        )
                return dest
            except (urllib.error.URLError, OSError, TimeoutError) as err:
                errors.append(f"{url}: {err}")
                if attempt < retries:
                    time.sleep(1.0 * (attempt + 1))
    raise DataNotFoundError(
        f"could not download {dest.name}:\n  " + "\n  ".join(errors) + "\n"
        f"If this machine is offline, copy the data folder here and set ${DATA_ENV} to it "
        f"(it must contain {dest.parent.name}/{dest.name})."
    )


def fetch(relpath: str, path: str | Path | None = None, download: bool = True) -> Path:
    """Return the local path of a registry file, verified, downloading it into the cache if needed.

    Args:
        relpath: the file's registry name, e.g. ``"imdb/imdb_train.csv.gz"``.
        path: an explicit file (or a data folder holding ``relpath``); used first and verified.
        download: when False, raise :class:`DataNotFoundError` instead of downloading.
    """
    entry = _entry(relpath)
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / relpath
        if not p.is_file():
            raise DataNotFoundError(f"{p} does not exist (explicit path given for '{relpath}')")
        return verify(p, entry)
    if (home := data_home()) is not None and (home / relpath).is_file():
        return verify(home / relpath, entry)
    cached = cache_dir() / relpath
    if cached.is_file():
        return verify(cached, entry)
    if not download:
        raise _not_found(relpath, "download=False")
    if _offline():
        raise _not_found(relpath, f"${OFFLINE_ENV}={os.environ.get(OFFLINE_ENV)} forbids downloads")
    return _materialize(entry, cached)


def _materialize(entry: DataFile, dest: Path) -> Path:
    if entry.urls:
        return _download(entry.urls, dest, entry.sha256)
    archive_path = None
    if entry.archive is not None:
        archive = ARCHIVES[entry.archive]
        archive_path = cache_dir() / "_archives" / archive.filename
        if not archive_path.is_file() or file_sha256(archive_path) != archive.sha256:
            _download(archive.urls, archive_path, archive.sha256)
    data = entry.build(archive_path)
    tmp = dest.with_name(f".building.{dest.name}")  # keeps the suffix content_sha256 reads
    _atomic_write(tmp, data)
    try:
        verify(tmp, entry)
    except ChecksumError:
        tmp.unlink(missing_ok=True)
        raise
    _atomic_write(dest, src=tmp)
    return dest


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a NumPy array with the shape its header gives."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    dtype = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[raw[2]]
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {data.size} values (truncated file?)")
    return data.reshape(shape)
