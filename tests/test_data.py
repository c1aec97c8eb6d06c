"""llmscratch.data: the registry, checksums, resolution order, downloads (against a local server) and loaders."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from llmscratch import data
from llmscratch.data import ChecksumError, DataFile, DataNotFoundError


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No $LLMSCRATCH_DATA, an empty cache, downloads allowed (tests that download serve from 127.0.0.1)."""
    monkeypatch.delenv("LLMSCRATCH_DATA", raising=False)
    monkeypatch.setenv("LLMSCRATCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LLMSCRATCH_OFFLINE", raising=False)
    data._VERIFIED.clear()
    return tmp_path


@pytest.fixture
def server(tmp_path):
    """A static file server on 127.0.0.1 over tmp_path/www; yields (root folder, base URL, request log)."""
    root = tmp_path / "www"
    root.mkdir()
    log = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args):
            log.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_port}/", log
    httpd.shutdown()


def _entry(relpath: str, payload: bytes, url: str) -> DataFile:
    return DataFile(relpath, hashlib.sha256(payload).hexdigest(), urls=(url,))


# --- the registry matches the shared data folder -------------------------------------------------------------


def test_registry_covers_the_design(data_dir):
    expected = {
        "gpt2/encoder.json", "gpt2/vocab.bpe", "text/the-verdict.txt", "imdb/imdb_train.csv.gz",
        "imdb/imdb_test.csv.gz", "imdb/imdb_unsup.csv.gz", "mnist/train-images-idx3-ubyte.gz",
        "mnist/train-labels-idx1-ubyte.gz", "mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz",
        "mnist/mnist.npz", "sms_spam/SMSSpamCollection.tsv",
    } | {f"nltk_data/corpora/wordnet/{name}" for name in (
        "LICENSE", "adj.exc", "adv.exc", "cntlist.rev", "data.adj", "data.adv", "data.noun", "data.verb",
        "index.adj", "index.adv", "index.noun", "index.sense", "index.verb", "lexnames", "noun.exc",
        "sentidx.vrb", "sents.vrb", "verb.exc")}
    assert set(data.REGISTRY) == expected
    for rel, entry in data.REGISTRY.items():
        assert len(entry.sha256) == 64
        # every file has a real way to be obtained: official URLs, or a build from an official archive/other files
        assert entry.urls or entry.build is not None, rel
        assert all(u.startswith("https://") for u in entry.urls), rel


@pytest.mark.parametrize("relpath", sorted(data.REGISTRY))
def test_shared_files_match_their_checksums(relpath, data_dir):
    path = data_dir / relpath
    assert data.file_sha256(path) == data.REGISTRY[relpath].sha256
    assert data.fetch(relpath) == path


def test_sizes_match(data_dir):
    for rel, entry in data.REGISTRY.items():
        assert (data_dir / rel).stat().st_size == entry.size, rel


def test_content_hash_of_built_files(data_dir):
    # built files also verify by content, so a rebuilt (differently compressed) copy is accepted
    for rel in ("imdb/imdb_test.csv.gz", "mnist/mnist.npz"):
        assert data.content_sha256(data_dir / rel) == data.REGISTRY[rel].content_sha256


def test_recompressed_copy_passes_by_content(data_dir, tmp_path):
    raw = gzip.decompress((data_dir / "imdb/imdb_test.csv.gz").read_bytes())
    copy = tmp_path / "imdb_test.csv.gz"
    copy.write_bytes(gzip.compress(raw, compresslevel=1))
    assert data.file_sha256(copy) != data.REGISTRY["imdb/imdb_test.csv.gz"].sha256
    assert data.verify(copy, "imdb/imdb_test.csv.gz") == copy


# --- resolution order ------------------------------------------------------------------------------------------


def test_resolution_order(isolated, data_dir, monkeypatch):
    rel = "text/the-verdict.txt"
    src = (data_dir / rel).read_bytes()
    explicit = isolated / "explicit.txt"
    explicit.write_bytes(src)
    home = isolated / "home"
    (home / "text").mkdir(parents=True)
    (home / rel).write_bytes(src)
    cache = data.cache_dir() / rel
    cache.parent.mkdir(parents=True)
    cache.write_bytes(src)

    monkeypatch.setenv("LLMSCRATCH_DATA", str(home))
    assert data.fetch(rel, path=explicit) == explicit          # 1. explicit file
    assert data.fetch(rel, path=home) == home / rel            #    explicit folder
    assert data.fetch(rel) == home / rel                       # 2. $LLMSCRATCH_DATA
    monkeypatch.delenv("LLMSCRATCH_DATA")
    assert data.fetch(rel) == cache                            # 3. cache
    cache.unlink()
    monkeypatch.setenv("LLMSCRATCH_OFFLINE", "1")
    with pytest.raises(DataNotFoundError, match="LLMSCRATCH_OFFLINE"):
        data.fetch(rel)                                        # 4. download (forbidden here)
    with pytest.raises(DataNotFoundError, match="download=False"):
        data.fetch(rel, download=False)


def test_data_home_without_the_file_falls_through_to_cache(isolated, data_dir, monkeypatch):
    rel = "text/the-verdict.txt"
    monkeypatch.setenv("LLMSCRATCH_DATA", str(isolated / "empty"))
    cache = data.cache_dir() / rel
    cache.parent.mkdir(parents=True)
    cache.write_bytes((data_dir / rel).read_bytes())
    assert data.fetch(rel) == cache


def test_missing_explicit_path_is_an_error(isolated):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        data.fetch("text/the-verdict.txt", path=isolated / "nope.txt")


def test_unknown_file_lists_known_ones():
    with pytest.raises(KeyError, match="known files: gpt2/encoder.json"):
        data.fetch("imdb/imdb_dev.csv.gz")


# --- corrupted files are rejected --------------------------------------------------------------------------------


def test_corrupted_file_is_rejected_with_the_fix(isolated, data_dir, monkeypatch):
    rel = "text/the-verdict.txt"
    home = isolated / "home"
    (home / "text").mkdir(parents=True)
    bad = bytearray((data_dir / rel).read_bytes())
    bad[100] ^= 0xFF
    (home / rel).write_bytes(bytes(bad))
    monkeypatch.setenv("LLMSCRATCH_DATA", str(home))
    with pytest.raises(ChecksumError, match="delete it and run again"):
        data.load_the_verdict()


def test_truncated_gzip_is_rejected(isolated, data_dir):
    p = isolated / "imdb_test.csv.gz"
    p.write_bytes((data_dir / "imdb/imdb_test.csv.gz").read_bytes()[:5000])
    with pytest.raises(ChecksumError):
        data.verify(p, "imdb/imdb_test.csv.gz")


def test_fixed_file_is_accepted_after_a_rejection(isolated, data_dir):
    # verification is cached by (path, size, mtime): a replaced file must be checked again
    rel = "text/the-verdict.txt"
    p = isolated / "v.txt"
    p.write_bytes(b"not the story")
    with pytest.raises(ChecksumError):
        data.verify(p, rel)
    p.write_bytes((data_dir / rel).read_bytes())
    assert data.verify(p, rel) == p


# --- downloads (a local server; never the internet) --------------------------------------------------------------


def test_download_verifies_and_caches(isolated, server, monkeypatch):
    root, base, log = server
    payload = b"hello course\n" * 100
    (root / "f.txt").write_bytes(payload)
    entry = _entry("text/f.txt", payload, base + "f.txt")
    monkeypatch.setitem(data.REGISTRY, "text/f.txt", entry)
    path = data.fetch("text/f.txt")
    assert path == data.cache_dir() / "text/f.txt" and path.read_bytes() == payload
    assert data.fetch("text/f.txt") == path and len(log) == 1  # second call: from the cache, no request
    assert not list(path.parent.glob(".*part")), "temporary file left behind"


def test_download_with_wrong_checksum_caches_nothing(isolated, server, monkeypatch):
    root, base, _ = server
    (root / "f.txt").write_bytes(b"tampered")
    entry = DataFile("text/f.txt", "0" * 64, urls=(base + "f.txt",))
    monkeypatch.setitem(data.REGISTRY, "text/f.txt", entry)
    with pytest.raises(ChecksumError, match="nothing was cached"):
        data.fetch("text/f.txt")
    folder = data.cache_dir() / "text"
    assert not folder.exists() or not any(folder.iterdir()), list(folder.iterdir())


def test_download_falls_back_to_the_next_mirror(isolated, server, monkeypatch):
    root, base, log = server
    payload = b"mirror two"
    (root / "b.txt").write_bytes(payload)
    entry = DataFile("text/m.txt", hashlib.sha256(payload).hexdigest(), urls=(base + "missing.txt", base + "b.txt"))
    monkeypatch.setitem(data.REGISTRY, "text/m.txt", entry)
    monkeypatch.setattr(data.time, "sleep", lambda s: None)
    assert data.fetch("text/m.txt").read_bytes() == payload


def test_unreachable_download_names_the_offline_fix(isolated, monkeypatch):
    entry = DataFile("text/x.txt", "0" * 64, urls=("http://127.0.0.1:9/x.txt",))  # port 9: nothing listens
    monkeypatch.setitem(data.REGISTRY, "text/x.txt", entry)
    monkeypatch.setattr(data.time, "sleep", lambda s: None)
    with pytest.raises(DataNotFoundError, match="set \\$LLMSCRATCH_DATA"):
        data.fetch("text/x.txt")


def test_imdb_is_built_from_the_official_archive_layout(isolated, server, monkeypatch):
    """The IMDB builder on a tiny archive with the official layout: labels, order and CSV form."""
    root, base, _ = server
    reviews = {
        "aclImdb/train/pos/3_9.txt": 'Great, "really" great.<br /><br />Yes',
        "aclImdb/train/pos/1_7.txt": "Good film",
        "aclImdb/train/neg/2_1.txt": "Bad\nfilm",
        "aclImdb/train/unsup/0_0.txt": "Unlabeled one",
        "aclImdb/test/pos/0_10.txt": "Test positive",
        "aclImdb/README": "not a review",
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in reviews.items():
            blob = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    archive = buf.getvalue()
    (root / "aclImdb_v1.tar.gz").write_bytes(archive)
    monkeypatch.setitem(
        data.ARCHIVES, "aclImdb",
        data.Archive("aclImdb_v1.tar.gz", (base + "aclImdb_v1.tar.gz",), hashlib.sha256(archive).hexdigest()),
    )
    built = data._build_imdb("train")
    data._download((base + "aclImdb_v1.tar.gz",), isolated / "a.tgz", hashlib.sha256(archive).hexdigest())
    csv_text = gzip.decompress(built(isolated / "a.tgz")).decode()
    assert csv_text.startswith("text,label\r\n")
    import pandas as pd

    df = pd.read_csv(io.StringIO(csv_text))
    assert sorted(df.label.tolist()) == [0, 1, 1]
    assert set(df.text) == {'Great, "really" great.<br /><br />Yes', "Good film", "Bad\nfilm"}
    unsup = pd.read_csv(io.StringIO(data.imdb_csv_from_archive(isolated / "a.tgz", "unsup").decode()))
    assert unsup.label.tolist() == [-1] and unsup.text.tolist() == ["Unlabeled one"]
    # and fetch() builds, verifies (content hash) and caches it atomically
    entry = DataFile("imdb/imdb_train.csv.gz", "0" * 64, archive="aclImdb", build=built,
                     content_sha256=hashlib.sha256(csv_text.encode()).hexdigest())
    monkeypatch.setitem(data.REGISTRY, "imdb/imdb_train.csv.gz", entry)
    out = data.fetch("imdb/imdb_train.csv.gz")
    assert out == data.cache_dir() / "imdb/imdb_train.csv.gz"
    assert data.load_imdb("train").shape == (3, 2)


def test_imdb_conversion_matches_the_shared_processing(data_dir):
    """The shared CSV was made by the same rule the builder applies: sort by (label, id), shuffle with seed 0."""
    df = data.load_imdb("test")
    assert df.shape == (25_000, 2) and df.label.value_counts().to_dict() == {1: 12_500, 0: 12_500}
    assert data.load_imdb("unsup", limit=10).label.eq(-1).all()


# --- loaders ---------------------------------------------------------------------------------------------------


def test_load_the_verdict(data_dir):
    text = data.load_the_verdict()
    assert len(text) == 20_479 and text.startswith("I HAD always thought Jack Gisburn")


def test_load_imdb(data_dir):
    df = data.load_imdb("train", limit=100)
    assert list(df.columns) == ["text", "label"] and len(df) == 100
    assert df.text.map(type).eq(str).all() and set(df.label) <= {0, 1}
    with pytest.raises(ValueError, match="'train', 'test' or 'unsup'"):
        data.load_imdb("dev")


def test_load_mnist(data_dir):
    x, y = data.load_mnist("test")
    assert x.shape == (10_000, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (10_000,) and y.dtype == torch.uint8
    assert torch.bincount(y.long()).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    with np.load(data_dir / "mnist/mnist.npz") as npz:  # the IDX reader agrees with the npz copy
        assert np.array_equal(npz["x_test"], x.numpy()) and np.array_equal(npz["y_test"], y.numpy())
    with pytest.raises(ValueError, match="'train' or 'test'"):
        data.load_mnist("val")


def test_mnist_npz_builder_reproduces_the_content(data_dir, isolated, monkeypatch):
    monkeypatch.setenv("LLMSCRATCH_DATA", str(data_dir))
    blob = data._build_mnist_npz(None)
    p = isolated / "mnist.npz"
    p.write_bytes(blob)
    assert data.content_sha256(p) == data.REGISTRY["mnist/mnist.npz"].content_sha256


def test_read_idx_rejects_garbage(tmp_path):
    p = tmp_path / "x.idx"
    p.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(p)
    p.write_bytes(b"\x00\x00\x08\x01" + (10).to_bytes(4, "big") + b"\x00" * 5)
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(p)


def test_load_sms_spam(data_dir):
    df = data.load_sms_spam()
    assert df.shape == (5_574, 2) and df.label.value_counts().to_dict() == {"ham": 4_827, "spam": 747}


# --- errors that name the fix ----------------------------------------------------------------------------------


def test_offline_miss_names_the_file_where_it_looked_and_the_variable(isolated, monkeypatch):
    home = isolated / "home"
    home.mkdir()
    monkeypatch.setenv("LLMSCRATCH_DATA", str(home))
    monkeypatch.setenv("LLMSCRATCH_OFFLINE", "1")
    cache = isolated / "cache"
    with pytest.raises(DataNotFoundError) as err:
        data.load_imdb("test", limit=5)
    msg = str(err.value)
    assert "'imdb/imdb_test.csv.gz' is not on disk and $LLMSCRATCH_OFFLINE=1 forbids downloads" in msg
    assert f"$LLMSCRATCH_DATA = {home} (no {home / 'imdb/imdb_test.csv.gz'})" in msg
    assert f"the cache {cache / 'imdb/imdb_test.csv.gz'}" in msg
    assert "set $LLMSCRATCH_DATA to a data folder that holds imdb/imdb_test.csv.gz" in msg
    monkeypatch.delenv("LLMSCRATCH_DATA")
    with pytest.raises(DataNotFoundError, match=r"Looked in: \$LLMSCRATCH_DATA \(unset\)"):
        data.fetch("text/the-verdict.txt")
    monkeypatch.delenv("LLMSCRATCH_OFFLINE")
    with pytest.raises(DataNotFoundError, match="'text/the-verdict.txt' is not on disk and download=False"):
        data.fetch("text/the-verdict.txt", download=False)


def test_bad_limit_arguments(data_dir):
    for bad in (10.5, "10", True):
        with pytest.raises(TypeError, match="limit must be a positive int .* or None for all rows"):
            data.load_imdb("test", limit=bad)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="positive number of rows"):
            data.load_imdb("test", limit=bad)
    assert len(data.load_imdb("test", limit=np.int64(3))) == 3


def test_bad_text_arguments():
    from llmscratch.data import GPTDataset, create_dataloader, sliding_windows

    with pytest.raises(TypeError, match="is None: pass the text"):
        GPTDataset(None)
    with pytest.raises(TypeError, match=r"is bytes: decode it first \(data.decode\('utf-8'\)\)"):
        create_dataloader(b"some text")
    with pytest.raises(TypeError, match=r"sequence of texts.*'<\|endoftext\|>'.join\(texts\)"):
        GPTDataset(["first review", "second review"])
    pd = pytest.importorskip("pandas")
    with pytest.raises(TypeError, match="sequence of texts"):
        GPTDataset(pd.Series(["first review", "second review"]))
    with pytest.raises(ValueError, match="the text is empty"):
        GPTDataset("")
    with pytest.raises(TypeError, match=r"must be integers, got a torch.float32 array.*ids.long\(\)"):
        GPTDataset(torch.arange(20.0), max_length=4, stride=4)  # silently truncated before
    with pytest.raises(TypeError, match=r"must be integers, got 2.5 \(float"):
        sliding_windows([1, 2, 2.5, 4, 5, 6], 2, 1)
    with pytest.raises(TypeError, match="float64"):
        sliding_windows(np.arange(10.0), 2, 1)
    x, _ = sliding_windows(np.arange(10), 2, 1)  # integer arrays are fine
    assert x.dtype == torch.long


def test_corruption_after_verification_is_caught_with_same_size_and_mtime(isolated, data_dir, monkeypatch):
    import time

    rel = "text/the-verdict.txt"
    home = isolated / "home"
    (home / "text").mkdir(parents=True)
    p = home / rel
    p.write_bytes((data_dir / rel).read_bytes())
    monkeypatch.setenv("LLMSCRATCH_DATA", str(home))
    assert data.load_the_verdict().startswith("I HAD always")  # verified and remembered
    before = p.stat()
    time.sleep(0.05)  # past the filesystem's timestamp tick
    with open(p, "r+b") as fh:  # flip one byte in place
        fh.seek(100)
        b = fh.read(1)
        fh.seek(100)
        fh.write(bytes([b[0] ^ 0xFF]))
    os.utime(p, ns=(before.st_atime_ns, before.st_mtime_ns))  # and hide it: same size, same mtime
    after = p.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    with pytest.raises(ChecksumError, match="delete it and run again"):
        data.load_the_verdict()


def test_verify_memo_is_an_opt_out(isolated, data_dir, monkeypatch):
    rel = "text/the-verdict.txt"
    hashed = []
    real = data.file_sha256
    # verify lives in data.registry: patch the name it looks up
    monkeypatch.setattr(data.registry, "file_sha256", lambda path, *a: hashed.append(path) or real(path, *a))
    p = data_dir / rel
    data.verify(p, rel)
    data.verify(p, rel)
    assert len(hashed) == 1, "the second call trusts the memo"
    data.verify(p, rel, memo=False)
    monkeypatch.setenv("LLMSCRATCH_VERIFY", "always")
    data.verify(p, rel)
    assert len(hashed) == 3


def test_wordnet_is_downloaded_from_the_registry_url_when_not_on_disk(isolated, server, monkeypatch):
    """Online users get NLTK's wordnet.zip (served here from 127.0.0.1) unpacked into the cache's nltk_data/."""
    import zipfile

    from llmscratch.data import augment

    root, base, log = server
    with zipfile.ZipFile(root / "wordnet.zip", "w") as zf:  # NLTK's layout: files under wordnet/
        zf.writestr("wordnet/data.noun", "  1 header\n")
        zf.writestr("wordnet/index.noun", "  1 header\n")
    monkeypatch.setattr(augment, "WORDNET_URLS", (base + "wordnet.zip",))
    # a zip that is not the pinned one is refused, and nothing is cached or unpacked
    with pytest.raises(ChecksumError, match="sha256"):
        augment._nltk_home()
    assert not (isolated / "cache" / "nltk_data").exists()
    assert not (isolated / "cache" / "_archives" / "wordnet.zip").exists()
    log.clear()
    monkeypatch.setattr(augment, "WORDNET_SHA256", data.file_sha256(root / "wordnet.zip"))
    home = augment._nltk_home()
    assert home == isolated / "cache" / "nltk_data" and log == ["/wordnet.zip"]
    assert (home / "corpora/wordnet/index.noun").read_text() == "  1 header\n"
    assert augment._nltk_home() == home and log == ["/wordnet.zip"]  # found in the cache the second time
    (home / "corpora/wordnet/data.noun").unlink()
    monkeypatch.setenv("LLMSCRATCH_OFFLINE", "1")
    with pytest.raises(DataNotFoundError, match="LLMSCRATCH_DATA"):
        augment._nltk_home()


def test_wordnet_file_is_built_from_the_pinned_zip(isolated, server, monkeypatch):
    """A registry WordNet file that is nowhere on disk is extracted from NLTK's zip (pinned by sha256)."""
    import zipfile

    root, base, log = server
    content = b"  1 the lexnames of a toy WordNet\n"
    with zipfile.ZipFile(root / "wordnet.zip", "w") as zf:
        zf.writestr("wordnet/lexnames", content)
    rel = "nltk_data/corpora/wordnet/lexnames"
    archive = data.Archive("wordnet.zip", (base + "wordnet.zip",), data.file_sha256(root / "wordnet.zip"))
    monkeypatch.setitem(data.ARCHIVES, "wordnet", archive)
    entry = DataFile(rel, hashlib.sha256(content).hexdigest(), archive="wordnet",
                     build=data.REGISTRY[rel].build)
    monkeypatch.setitem(data.REGISTRY, rel, entry)
    path = data.fetch(rel)
    assert path == isolated / "cache" / rel and path.read_bytes() == content and log == ["/wordnet.zip"]
    # a zip without the member says what is wrong
    other = "nltk_data/corpora/wordnet/sents.vrb"
    monkeypatch.setitem(data.REGISTRY, other, DataFile(other, "0" * 64, archive="wordnet",
                                                       build=data.REGISTRY[other].build))
    with pytest.raises(DataNotFoundError, match="no wordnet/sents.vrb"):
        data.fetch(other)
