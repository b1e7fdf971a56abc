"""The authors' published checkpoints: where they are, a verified local copy, and the data split they trained on.

- `REGISTRY` names the checkpoints the course knows, each with its download URLs (tried in order) and, when
  known, its sha256. `DEFAULT_CHECKPOINT` is the one chapter 7 analyses.
- `fetch(name)` returns the path of a verified local copy. The first call downloads it into the cache directory
  (`$GROKKING_CACHE_DIR`, default `~/.cache/grokking-course`) with a progress bar; a body shorter or longer than
  its Content-Length, an empty body, or a Git LFS pointer served instead of the data is refused and deleted.
  The file's sha256 is recorded beside it (`NAME.sha256`) and checked on every later use, and against the
  registry's when it is known. Every failure raises `DownloadUnavailable` (its message says why and what to do),
  so a notebook can catch it and carry on offline.
- `original_split(p, frac_train, seed)`: the training pairs the authors' training code picks for a seed, and
  `training_pairs(checkpoint)`: the training pairs of a checkpoint read with `utils.model`, and how we know them.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import random
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from tqdm.auto import tqdm

from utils.data import check_p
from utils.model import OriginalCheckpoint

__all__ = ["Published", "REGISTRY", "DEFAULT_CHECKPOINT", "DownloadUnavailable", "DownloadCorrupt", "cache_dir",
           "fetch", "original_split", "training_pairs"]

CACHE_ENV = "GROKKING_CACHE_DIR"
LFS_POINTER = b"version https://git-lfs.github.com/spec/"  # how a Git LFS pointer file begins
CHUNK = 1 << 16


@dataclass(frozen=True)
class Published:
    """A file published with the paper: its name in the cache, where to download it, what it is."""

    filename: str
    urls: tuple[str, ...]  # tried in order until one gives a verified file
    about: str
    sha256: str | None = None  # None: not known in advance; recorded beside the file at the first download


def _github(repository: str, commit: str, path: str) -> str:
    """A GitHub file at a fixed commit; github.com/…/raw/… also serves files kept in Git LFS."""
    return f"https://github.com/{repository}/raw/{commit}/{path}"


_AUTHORS = ("neelnanda-io/Grokking", "dfbd38f7d23e09aaa5e5c9bd0483b69ca533e580")  # the paper's repository
_COMPANION = ("mechanistic-interpretability-grokking/progress-measures-paper",
              "1dc9f5b6b8aa8947a086e2c4963f3ab56f17a197")  # the paper's training-code repository (same runs)


def _saved_run(filename: str, about: str) -> Published:
    urls = tuple(_github(repo, commit, f"saved_runs/{filename}") for repo, commit in (_AUTHORS, _COMPANION))
    return Published(filename, urls, about)


REGISTRY: dict[str, Published] = {
    "wd_10-1_mod_addition": _saved_run(
        "wd_10-1_mod_addition_loss_curve.pth",
        "modular addition, p = 113, the paper's one-layer architecture; a run saved with its loss curves"),
    "mod_addition_no_wd": _saved_run(
        "mod_addition_no_wd.pth", "modular addition, p = 113, trained without weight decay"),
}
DEFAULT_CHECKPOINT = "wd_10-1_mod_addition"


class DownloadUnavailable(RuntimeError):
    """No verified copy could be had (no network, HTTP error, a bad or corrupt file); the message says why."""


class DownloadCorrupt(DownloadUnavailable):
    """What arrived or what the cache holds is not the file: truncated, empty, a Git LFS pointer, a wrong sha256."""


def cache_dir() -> Path:
    """Where downloads are kept: $GROKKING_CACHE_DIR, or ~/.cache/grokking-course."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "grokking-course").expanduser()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _verify_cached(path: Path, entry: Published) -> None:
    """Check a cached file against the sha256 recorded beside it (recording it if absent) and the registry's."""
    actual = _sha256(path)
    sidecar = _sidecar(path)
    recorded = sidecar.read_text().split()[0] if sidecar.is_file() and sidecar.read_text().strip() else None
    for expected, where in ((entry.sha256, "the course's registry"), (recorded, str(sidecar))):
        if expected and expected != actual:
            raise DownloadCorrupt(
                f"{path}: sha256 {actual} differs from {expected} recorded in {where}: the file changed or was "
                f"damaged since it was checked. Delete {path} and {sidecar} to download it again.")
    with open(path, "rb") as f:
        head = f.read(len(LFS_POINTER))
    if not head or head == LFS_POINTER:
        raise DownloadCorrupt(f"{path} is empty or a Git LFS pointer, not the checkpoint: delete it and "
                              "download it again.")
    if recorded is None:  # a file put there by hand: trust it from now on
        sidecar.write_text(f"{actual}  {path.name}\n")


def _download(url: str, dest: Path, entry: Published, progress: bool, timeout: float) -> None:
    """Stream url into dest via a .part file, checking size, LFS pointers and sha256; raise on any problem."""
    # Long (43 lines): one download with its checks and clean-up on every failure path, kept together.
    part = dest.with_name(dest.name + ".part")
    request = urllib.request.Request(url, headers={"User-Agent": "grokking-course"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(part, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            digest, received, head = hashlib.sha256(), 0, b""
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}",
                      disable=not progress) as bar:
                while chunk := response.read(CHUNK):
                    head = head if len(head) >= len(LFS_POINTER) else head + chunk[:len(LFS_POINTER)]
                    digest.update(chunk)
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if total is not None and received != total:
            raise DownloadCorrupt(f"{url}: received {received:,} bytes but the server announced {total:,}: the "
                                  "download was cut short; it was deleted. Try again later.")
        if received == 0:
            raise DownloadCorrupt(f"{url}: the server sent an empty file; it was deleted.")
        if head.startswith(LFS_POINTER):
            raise DownloadCorrupt(
                f"{url}: the server sent a Git LFS pointer (a small text file that names the data) instead of "
                "the checkpoint: the repository keeps it in Git LFS and this URL does not resolve it. Download "
                f"the file by hand from the repository's web page and save it as {dest}.")
        if entry.sha256 and digest.hexdigest() != entry.sha256:
            raise DownloadCorrupt(f"{url}: sha256 {digest.hexdigest()} differs from the course's registry "
                                  f"({entry.sha256}): not the published file; it was deleted.")
        part.replace(dest)
        _sidecar(dest).write_text(f"{digest.hexdigest()}  {dest.name}\n")
    except http.client.IncompleteRead as err:
        raise DownloadCorrupt(f"{url}: the connection closed after {len(err.partial):,} bytes, before the "
                              "announced length: the download was cut short; it was deleted.") from None
    except urllib.error.HTTPError as err:
        raise DownloadUnavailable(f"{url}: HTTP {err.code} ({err.reason})") from None
    except urllib.error.URLError as err:
        raise DownloadUnavailable(f"{url}: no connection ({err.reason})") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
        raise DownloadUnavailable(f"{url}: no connection ({type(err).__name__}: {err})") from None
    finally:
        part.unlink(missing_ok=True)


def fetch(name: str | Published = DEFAULT_CHECKPOINT, *, cache: str | Path | None = None, progress: bool = True,
          timeout: float = 30.0) -> Path:
    """The path of a verified local copy of a published checkpoint, downloading it on first use.

    Raises DownloadUnavailable (DownloadCorrupt for a bad file) with a message that says why and what to do.
    """
    if isinstance(name, Published):
        entry = name
    elif name in REGISTRY:
        entry = REGISTRY[name]
    else:
        raise KeyError(f"no published checkpoint named {name!r}; known: {sorted(REGISTRY)}")
    folder = Path(cache) if cache is not None else cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / entry.filename
    with FileLock(str(folder / f"{entry.filename}.lock")):
        if dest.is_file():
            _verify_cached(dest, entry)
            return dest
        failures: list[DownloadUnavailable] = []
        for url in entry.urls:
            try:
                _download(url, dest, entry, progress, timeout)
                return dest
            except DownloadUnavailable as err:
                failures.append(err)
    kind = DownloadCorrupt if any(isinstance(f, DownloadCorrupt) for f in failures) else DownloadUnavailable
    reasons = "\n".join(f"  - {f}" for f in failures)
    raise kind(f"could not download {entry.filename}:\n{reasons}\nIf this machine is offline, download it "
               f"elsewhere from {entry.urls[0]} and copy it to {dest}.")


def original_split(p: int, frac_train: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (a·p + b) of the training and test pairs the authors' training code picks: the p² pairs in row order,
    shuffled by Python's `random` seeded with `seed`, the first int(frac_train·p²) for training. Both sorted."""
    check_p(p)
    if not 0 < frac_train < 1:
        raise ValueError(f"frac_train must be strictly between 0 and 1, got {frac_train!r}")
    rows = list(range(p * p))
    random.Random(seed).shuffle(rows)  # the same stream as random.seed(seed); random.shuffle(rows)
    cut = int(frac_train * p * p)
    return torch.tensor(sorted(rows[:cut])), torch.tensor(sorted(rows[cut:]))


def training_pairs(checkpoint: OriginalCheckpoint) -> tuple[torch.Tensor | None, str]:
    """The rows of a checkpoint's training pairs (None if unknown) and, in words, how we know them."""
    if checkpoint.train_idx is not None:
        return checkpoint.train_idx, "listed in the checkpoint (train_data)"
    config, p = checkpoint.config, checkpoint.model.cfg.d_vocab_out
    if isinstance(config.get("seed"), int) and isinstance(config.get("frac_train"), float):
        seed, frac = config["seed"], config["frac_train"]
        return (original_split(p, frac, seed)[0],
                f"rebuilt from the config (seed {seed}, frac_train {frac}) with the authors' split rule")
    return None, "not recorded: the checkpoint has neither train_data nor a seed and frac_train"
