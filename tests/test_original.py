"""utils.original: downloading a published checkpoint into a verified cache, and the authors' data split.

Every download test talks to a small HTTP server on 127.0.0.1 in a thread: no test reaches the network.
"""
import hashlib
import io
import random
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from utils import original
from utils.data import make_dataset
from utils.model import export_original_checkpoint, make_model, model_config, read_original_checkpoint
from utils.original import DownloadCorrupt, DownloadUnavailable, Published

LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
               b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 1843\n")


def _checkpoint_bytes(seed: int = 0) -> bytes:
    model = make_model(model_config(p=13, d_model=16, n_heads=2, d_mlp=24, seed=seed))
    buffer = io.BytesIO()
    torch.save(export_original_checkpoint(model, config={"seed": 3, "frac_train": 0.3}), buffer)
    return buffer.getvalue()


class Server:
    """Serves routes {path: (status, body, announced length or None)} on 127.0.0.1 and counts requests."""

    def __init__(self, routes: dict):
        self.routes, self.requests = routes, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                status, body, length = server.routes.get(self.path, (404, b"not found", None))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def _entry(server: Server, *paths: str, sha256: str | None = None) -> Published:
    return Published("ckpt.pth", tuple(server.url(p) for p in paths), "a synthetic checkpoint", sha256)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def test_download_stores_a_loadable_file_and_records_its_sha256(tmp_path):
    body = _checkpoint_bytes()
    with Server({"/ckpt.pth": (200, body, None)}) as server:
        path = original.fetch(_entry(server, "/ckpt.pth"), cache=tmp_path, progress=False)
    assert path == tmp_path / "ckpt.pth" and path.read_bytes() == body
    assert (tmp_path / "ckpt.pth.sha256").read_text().split()[0] == hashlib.sha256(body).hexdigest()
    read = read_original_checkpoint(path)
    tokens, _ = make_dataset(13)
    assert read.model(tokens).shape == (169, 3, 13) and read.config["seed"] == 3


def test_a_cached_file_is_verified_and_reused_without_a_request(tmp_path):
    body = _checkpoint_bytes()
    with Server({"/ckpt.pth": (200, body, None)}) as server:
        entry = _entry(server, "/ckpt.pth", sha256=hashlib.sha256(body).hexdigest())
        first = original.fetch(entry, cache=tmp_path, progress=False)
        second = original.fetch(entry, cache=tmp_path, progress=False)
    assert first == second and server.requests == ["/ckpt.pth"]


def test_a_cached_file_that_changed_is_refused_with_what_to_delete(tmp_path):
    with Server({"/ckpt.pth": (200, _checkpoint_bytes(), None)}) as server:
        entry = _entry(server, "/ckpt.pth")
        path = original.fetch(entry, cache=tmp_path, progress=False)
        path.write_bytes(_checkpoint_bytes(seed=1))
        with pytest.raises(DownloadCorrupt, match=r"sha256 .* differs .*Delete .*ckpt\.pth and .*ckpt\.pth\.sha256"):
            original.fetch(entry, cache=tmp_path, progress=False)
    assert server.requests == ["/ckpt.pth"]


def test_a_download_with_the_wrong_sha256_is_refused_and_deleted(tmp_path):
    with Server({"/ckpt.pth": (200, _checkpoint_bytes(), None)}) as server:
        with pytest.raises(DownloadCorrupt, match="differs from the course's registry"):
            original.fetch(_entry(server, "/ckpt.pth", sha256="0" * 64), cache=tmp_path, progress=False)
    assert _leftovers(tmp_path) == []


def test_a_truncated_download_is_refused_and_deleted(tmp_path):
    body = _checkpoint_bytes()
    with Server({"/ckpt.pth": (200, body[:1000], len(body))}) as server:
        with pytest.raises(DownloadCorrupt, match="cut short"):
            original.fetch(_entry(server, "/ckpt.pth"), cache=tmp_path, progress=False)
    assert _leftovers(tmp_path) == []


def test_a_missing_file_is_unavailable_not_corrupt(tmp_path):
    with Server({}) as server:
        with pytest.raises(DownloadUnavailable, match="HTTP 404") as err:
            original.fetch(_entry(server, "/ckpt.pth"), cache=tmp_path, progress=False)
    assert not isinstance(err.value, DownloadCorrupt) and _leftovers(tmp_path) == []


def test_a_git_lfs_pointer_is_recognised_and_deleted(tmp_path):
    with Server({"/ckpt.pth": (200, LFS_POINTER, None)}) as server:
        with pytest.raises(DownloadCorrupt, match="Git LFS pointer"):
            original.fetch(_entry(server, "/ckpt.pth"), cache=tmp_path, progress=False)
    assert _leftovers(tmp_path) == []


def test_no_server_means_a_clean_typed_error_saying_what_to_do(tmp_path):
    with socket.socket() as s:  # a loopback port that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = Published("ckpt.pth", (f"http://127.0.0.1:{port}/ckpt.pth",), "nothing there")
    with pytest.raises(DownloadUnavailable, match=r"no connection.*\n.*copy it to .*ckpt\.pth") as err:
        original.fetch(entry, cache=tmp_path, progress=False, timeout=5)
    assert not isinstance(err.value, DownloadCorrupt) and _leftovers(tmp_path) == []


def test_the_next_url_is_tried_when_one_fails(tmp_path):
    body = _checkpoint_bytes()
    with Server({"/mirror.pth": (200, body, None)}) as server:
        path = original.fetch(_entry(server, "/gone.pth", "/mirror.pth"), cache=tmp_path, progress=False)
    assert path.read_bytes() == body and server.requests == ["/gone.pth", "/mirror.pth"]


def test_a_file_copied_into_the_cache_by_hand_is_used_and_its_sha256_recorded(tmp_path):
    body = _checkpoint_bytes()
    (tmp_path / "ckpt.pth").write_bytes(body)
    entry = Published("ckpt.pth", ("http://127.0.0.1:9/never",), "copied by hand")
    assert original.fetch(entry, cache=tmp_path, progress=False).read_bytes() == body
    assert (tmp_path / "ckpt.pth.sha256").read_text().split()[0] == hashlib.sha256(body).hexdigest()


def test_the_cache_directory_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GROKKING_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert original.cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("GROKKING_CACHE_DIR")
    assert original.cache_dir().parts[-2:] == (".cache", "grokking-course")


def test_every_registered_checkpoint_is_pinned_to_a_commit():
    assert original.DEFAULT_CHECKPOINT in original.REGISTRY
    for entry in original.REGISTRY.values():
        for url in entry.urls:
            assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+/raw/[0-9a-f]{40}/saved_runs/" +
                                re.escape(entry.filename), url), url


# --- the authors' split ----------------------------------------------------------------------------------------
def test_original_split_follows_the_authors_rule():
    p, frac, seed = 23, 0.3, 1
    pairs = [(a, b, p) for a in range(p) for b in range(p)]  # the rule as the paper's code states it
    random.seed(seed)
    random.shuffle(pairs)
    expected = sorted(a * p + b for a, b, _ in pairs[:int(frac * len(pairs))])
    train, test = original.original_split(p, frac, seed)
    assert train.tolist() == expected and len(train) == int(0.3 * 23 * 23)  # int() floors: 158, not 159
    assert sorted(train.tolist() + test.tolist()) == list(range(p * p))
    assert not torch.equal(train, original.original_split(p, frac, seed + 1)[0])


def _read(tmp_path, **blob_extra):
    model = make_model(model_config(p=13, d_model=16, n_heads=2, d_mlp=24))
    blob = export_original_checkpoint(model)
    blob["config"].update(blob_extra.pop("config", {}))
    blob.update(blob_extra)
    torch.save(blob, tmp_path / "c.pth")
    return read_original_checkpoint(tmp_path / "c.pth")


def test_training_pairs_prefer_a_listed_split_then_the_config_then_say_unknown(tmp_path):
    listed, how = original.training_pairs(_read(tmp_path, train_data=[(1, 2, 13)], config={"seed": 0,
                                                                                           "frac_train": 0.3}))
    assert listed.tolist() == [1 * 13 + 2] and "listed" in how
    rebuilt, how = original.training_pairs(_read(tmp_path, config={"seed": 4, "frac_train": 0.5}))
    assert torch.equal(rebuilt, original.original_split(13, 0.5, 4)[0]) and "seed 4" in how
    unknown, how = original.training_pairs(_read(tmp_path))
    assert unknown is None and "not recorded" in how
