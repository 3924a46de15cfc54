"""Downloads: official YOLOv5 v7.0 weights by name (``--weights yolov5s.pt``) and a checked, retried file fetch.

``attempt_download_weights(name)`` returns ``name`` when it exists. Otherwise, when its file name is one of the ten
YOLOv5 v7.0 release assets (:data:`OFFICIAL_WEIGHTS`), the asset is fetched once into a cache folder and that
cached path is returned; any other missing name is returned unchanged, so the caller's usual "not found" error
applies.

Where things come from and go:
- base URL: ``$TINYFOCAL_WEIGHTS_URL`` (a mirror, for users behind a firewall; also what the tests use), else
  :data:`DEFAULT_WEIGHTS_URL`; the asset is ``<base>/<name>``.
- cache: ``$TINYFOCAL_CACHE/weights``, else ``$XDG_CACHE_HOME/tinyfocal/weights``, else
  ``~/.cache/tinyfocal/weights``. A file already there is reused without any request.

Integrity: the transfer is written to a temporary file in the cache folder (``utils.atomic``) and renamed to its
final name only after its size equals the server's Content-Length (and :data:`KNOWN_WEIGHTS`' size, where known),
its SHA-256 equals the known digest and/or a ``<name>.sha256`` sidecar served next to the asset (optional:
mirrors may publish one), and it is a complete PyTorch archive (:func:`check_torch_archive`: a zip whose every
member passes its CRC check, holding ``data.pkl``) that the caller's ``verify`` (the loaders pass "it loads as a
checkpoint") accepts. So an HTML page answered with status 200, or a body cut short without a Content-Length,
never enters the cache. Network errors, server errors (5xx, 429) and truncated transfers are retried with a short
exponential backoff; a 404, a checksum mismatch or a file that is not a checkpoint is not. Failures raise
:class:`DownloadError` with a one-line message: what, from where, why, and where to put the file by hand. A cached
file that later fails to load is named in the loader's error with :func:`refresh_hint` (delete it to download it
again). Only the standard library's urllib is used.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from tqdm import tqdm

from utils.atomic import atomic_write
from utils.errors import UserError

LOGGER = logging.getLogger(__name__)

DEFAULT_WEIGHTS_URL = "https://github.com/ultralytics/yolov5/releases/download/v7.0"
WEIGHTS_URL_ENV = "TINYFOCAL_WEIGHTS_URL"
CACHE_ENV = "TINYFOCAL_CACHE"
OFFICIAL_WEIGHTS = frozenset(f"yolov5{size}{p6}.pt" for size in "nsmlx" for p6 in ("", "6"))
# name -> (bytes, sha256 hex) of release assets, checked on download. Only digests verified against the actual
# v7.0 assets belong here; none could be verified offline, so until then the Content-Length check and an optional
# mirror sidecar are what guard the transfer.
KNOWN_WEIGHTS: dict[str, tuple[int, str]] = {}
CHUNK = 1 << 16  # bytes per read
USER_AGENT = "tinyfocal-downloader"
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")


class DownloadError(UserError):
    """A file could not be downloaded or failed its checks; the one-line message says what, from where and why."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not match the expected size or SHA-256; nothing was kept."""


class _Retryable(Exception):
    """A transient failure (network, 5xx, truncated transfer): worth another attempt."""


# ---------------------------------------------------------------------------------------------------- locations
def weights_cache_dir() -> Path:
    """Folder where downloaded weights are kept (see the module docstring); not created here."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser() / "weights"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "tinyfocal" / "weights"


def weights_base_url() -> str:
    """Base URL of the weights assets: ``$TINYFOCAL_WEIGHTS_URL`` or the YOLOv5 v7.0 release, no trailing '/'."""
    return (os.environ.get(WEIGHTS_URL_ENV) or DEFAULT_WEIGHTS_URL).rstrip("/")


def is_official_weights(name_or_path: str | Path) -> bool:
    """True when the file name is one of the ten YOLOv5 v7.0 release assets (yolov5{n,s,m,l,x}{,6}.pt)."""
    return Path(name_or_path).name in OFFICIAL_WEIGHTS


# ---------------------------------------------------------------------------------------------------- weights
def attempt_download_weights(name_or_path: str | Path, *, retries: int = 3, backoff_s: float = 1.0,
                             timeout_s: float = 30.0, verify: Callable[[Path], object] | None = None) -> Path:
    """``name_or_path`` as a Path when it exists; for a missing official name (``yolov5s.pt``, also as
    ``some/dir/yolov5s.pt``) the cached release asset, downloaded first when absent; otherwise ``name_or_path``
    unchanged (the caller reports it as not found).

    A download enters the cache only after :func:`check_torch_archive` and then ``verify(temporary path)`` (e.g.
    "loads as a checkpoint"; raise to refuse it) accepted it.

    Raises:
        DownloadError: the asset could not be fetched (offline, 404, retries exhausted) or failed its size or
            checksum check; one line naming the file, the URL and where to put the file by hand.
    """
    path = Path(name_or_path)
    if path.exists() or not is_official_weights(path):
        return path
    name = path.name
    cache = weights_cache_dir()
    dst = cache / name
    if dst.is_file() and dst.stat().st_size > 0:
        return dst
    url = f"{weights_base_url()}/{name}"
    by_hand = (f"download it by hand and put it at {dst} (or pass its path to --weights), or set "
               f"{WEIGHTS_URL_ENV} to a mirror that serves {name}")
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create the weights cache folder {cache} ({e}); set {CACHE_ENV} to a writable "
                            f"folder or {by_hand}") from None
    size, sha = KNOWN_WEIGHTS.get(name, (None, None))
    sidecar = fetch_sha256_sidecar(f"{url}.sha256", timeout_s)
    if sha and sidecar and sidecar != sha:
        raise ChecksumError(f"{url}.sha256 gives {sidecar} but the known SHA-256 of {name} is {sha}: refusing "
                            f"the mirror's file; {by_hand}")
    LOGGER.info(f"Downloading {url} to {dst} ...")
    try:
        return download_file(url, dst, expected_size=size, sha256=sha or sidecar, retries=retries,
                             backoff_s=backoff_s, timeout_s=timeout_s, verify=_both(check_torch_archive, verify))
    except DownloadError as e:
        raise type(e)(f"{e}; {by_hand}") from None


def _both(first: Callable[[Path], object], then: Callable[[Path], object] | None) -> Callable[[Path], None]:
    def check(path: Path) -> None:
        first(path)
        if then is not None:
            then(path)

    return check


def check_torch_archive(path: str | Path) -> None:
    """Raise ValueError unless ``path`` is a complete PyTorch checkpoint archive: a zip (what ``torch.save`` writes
    since PyTorch 1.6, and the YOLOv5 v7.0 assets are) whose every member passes its CRC-32 check and that holds a
    ``data.pkl`` record. Catches an HTML page served instead of the file and a transfer cut short (a zip's
    directory is at its end). Reads the whole file once; unpickles nothing."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(64)
    if not zipfile.is_zipfile(path):
        what = "an HTML page" if head.lstrip()[:1] == b"<" else "not a zip archive"
        raise ValueError(f"not a PyTorch checkpoint ({what}, starting with {head[:40]!r}), or the transfer stopped "
                         "early")
    try:
        with zipfile.ZipFile(path) as z:
            bad, names = z.testzip(), z.namelist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
        raise ValueError(f"corrupt zip archive ({type(e).__name__}: {e})") from None
    if bad is not None:
        raise ValueError(f"corrupt archive: member {bad} fails its CRC check")
    if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        raise ValueError("a zip archive without data.pkl, not a PyTorch checkpoint")


def refresh_hint(path: str | Path) -> str:
    """How to refresh ``path`` when it is a file of the weights cache (``"it is a cached download: delete ... "``),
    else ''. Loaders append it to their error when a cached file fails to load."""
    p, cache = Path(path).resolve(), weights_cache_dir().resolve()
    if cache not in p.parents:
        return ""
    return (f"it is a cached download: delete {p} and run again to download it afresh (from {weights_base_url()}, "
            f"or set {WEIGHTS_URL_ENV} to a mirror)")


def fetch_sha256_sidecar(url: str, timeout_s: float = 30.0) -> str | None:
    """The lowercase hex digest in the text file at ``url`` (``sha256sum`` output or the bare digest), or None when
    it is absent or unreachable (one attempt: the main download reports connectivity problems).

    Raises:
        ChecksumError: the file exists but holds no SHA-256 digest (a broken mirror is refused, not ignored).
    """
    try:
        with urllib.request.urlopen(_request(url), timeout=timeout_s) as r:
            text = r.read(4096).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        LOGGER.debug(f"no checksum sidecar at {url} ({e})")
        return None
    token = text.split()[0] if text.split() else ""
    if not _SHA256_RE.fullmatch(token):
        raise ChecksumError(f"{url}: not a SHA-256 sidecar (expected 64 hex digits, got {text[:80]!r})")
    return token.lower()


# ---------------------------------------------------------------------------------------------------- any file
def download_file(url: str, dst: str | Path, *, expected_size: int | None = None, sha256: str | None = None,
                  retries: int = 3, backoff_s: float = 1.0, timeout_s: float = 30.0,
                  verify: Callable[[Path], object] | None = None) -> Path:
    """Fetch ``url`` into ``dst`` (whose folder must exist) through a temporary file in the same folder, renamed to
    ``dst`` only after the checks; ``dst`` is never left partial. Returns ``dst``.

    Checks: the byte count equals the Content-Length header (when sent) and ``expected_size`` (when given); the
    SHA-256 equals ``sha256`` (hex, when given); ``verify(temporary path)`` returns (when given; any exception
    refuses the file). Attempts: up to ``retries``, waiting ``backoff_s * 2**k`` seconds after failure k, for
    network errors, timeouts, HTTP 5xx/429/408 and truncated transfers.

    Raises:
        DownloadError: HTTP error other than the transient ones (e.g. 404), or every attempt failed.
        ChecksumError: wrong size (while the transfer itself was complete), wrong SHA-256 or refused by ``verify``;
            not retried.
    """
    dst = Path(dst)
    last = ""
    for attempt in range(1, max(retries, 1) + 1):
        try:
            return _fetch_once(url, dst, expected_size, sha256.lower() if sha256 else None, timeout_s, verify)
        except urllib.error.HTTPError as e:
            if e.code not in (408, 429) and e.code < 500:
                raise DownloadError(f"could not download {dst.name} from {url}: HTTP {e.code} {e.reason}") from None
            last = f"HTTP {e.code} {e.reason}"
        except _Retryable as e:
            last = str(e)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:  # offline, reset, timeout
            last = _reason(e)
        if attempt < retries:
            LOGGER.warning(f"download of {url} failed ({last}); retrying ({attempt}/{retries})")
            time.sleep(backoff_s * 2 ** (attempt - 1))
    raise DownloadError(f"could not download {dst.name} from {url} after {max(retries, 1)} attempt(s): {last}")


def _request(url: str) -> urllib.request.Request:
    return urllib.request.Request(url, headers={"User-Agent": USER_AGENT})


def _reason(e: BaseException) -> str:
    """A short, one-line reason for a network error (URLError wraps the socket error in ``reason``)."""
    r = getattr(e, "reason", None) or e
    return " ".join(f"{type(r).__name__}: {r}".split())[:200]


def _fetch_once(url: str, dst: Path, expected_size: int | None, sha256: str | None, timeout_s: float,
                verify: Callable[[Path], object] | None = None) -> Path:
    """One attempt of :func:`download_file`; a truncated transfer raises _Retryable, a bad file ChecksumError
    (both before the rename, so the temporary file is removed and ``dst`` untouched)."""
    with urllib.request.urlopen(_request(url), timeout=timeout_s) as r:
        header = r.headers.get("Content-Length")
        total = int(header) if header and header.isdigit() else None

        def write(fh: IO[bytes]) -> None:
            h, n = hashlib.sha256(), 0
            with tqdm(total=total or expected_size, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=dst.name, disable=None, leave=False) as bar:
                try:
                    while chunk := r.read(CHUNK):
                        fh.write(chunk)
                        h.update(chunk)
                        n += len(chunk)
                        bar.update(len(chunk))
                except http.client.IncompleteRead as e:  # server closed early (some Python versions raise)
                    raise _Retryable(f"truncated transfer: {n + len(e.partial)} of {total} bytes") from None
            if total is not None and n != total:
                raise _Retryable(f"truncated transfer: {n} of {total} bytes")
            if n == 0:
                raise _Retryable("empty response")
            if expected_size is not None and n != expected_size:
                raise ChecksumError(f"{url}: got {n} bytes, expected {expected_size}: refusing the file")
            if sha256 is not None and h.hexdigest() != sha256:
                raise ChecksumError(f"{url}: SHA-256 {h.hexdigest()} does not match the expected {sha256}: "
                                    f"refusing the file")

        def check(tmp: Path) -> None:
            if verify is None:
                return
            try:
                verify(tmp)
            except (ValueError, OSError) as e:  # the check's reason goes into the message
                reason = " ".join(str(e).replace(str(tmp), dst.name).split())[:300]
                raise ChecksumError(f"{url}: the downloaded file was refused, nothing was cached: {reason}") from None

        return atomic_write(dst, write, check)
