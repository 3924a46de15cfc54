"""Tracker settings: a tracker YAML (``trackers/*.yaml``) -> a validated, frozen :class:`TrackerConfig`.

Each key is declared once below with its default, range and meaning; ``python -m utils.config.tracker`` prints the
docs table. An unknown key, a wrong type or an out-of-range value raises ``TrackerConfigError`` naming the file and
the key. Units: detection scores in [0, 1]; similarities in [0, 1] (``utils.ops.pairwise``); sizes in original px.
"""

from __future__ import annotations

import sys
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from utils.errors import UserError

TRACKER_DIR = Path(__file__).resolve().parents[2] / "trackers"
DEFAULT_TRACKER = TRACKER_DIR / "bytetrack-tiny.yaml"
ASSOCIATIONS = ("iou", "nwd", "centre")


class TrackerConfigError(UserError):
    """A tracker YAML is invalid; the message names the file and the key."""


def key(default: Any, meaning: str, lo: float | None = None, hi: float | None = None,
        choices: tuple[str, ...] | None = None) -> Any:
    """Declare a tracker setting: default, allowed range (inclusive) or choices, and meaning."""
    return field(default=default, metadata={"meaning": meaning, "lo": lo, "hi": hi, "choices": choices})


@dataclass(frozen=True)
class TrackerConfig:
    # --- association ---
    association: str = key("nwd", "similarity of predicted tracks and detections: iou, nwd or centre",
                           choices=ASSOCIATIONS)
    nwd_c: float = key(12.8, "NWD constant in px: a centre offset of nwd_c px gives similarity 1/e", lo=0.1)
    centre_scale: float = key(1.0, "centre: distance in object sizes at which the similarity falls to 1/e", lo=0.01)
    match_thresh: float = key(0.2, "stage 1 (high-score detections, all tracks): least similarity of a match",
                              lo=0, hi=1)
    low_match_thresh: float = key(0.5, "stage 2 (low-score detections, tracks seen last frame): least similarity",
                                  lo=0, hi=1)
    unconfirmed_match_thresh: float = key(0.3, "stage 3 (left-over detections, tracks born last frame): least "
                                               "similarity", lo=0, hi=1)
    # --- detection scores ---
    track_high_thresh: float = key(0.5, "detections at or above this score enter stage 1", lo=0, hi=1)
    track_low_thresh: float = key(0.1, "detections below this score are ignored; those in between enter stage 2",
                                  lo=0, hi=1)
    new_track_thresh: float = key(0.6, "an unmatched detection at or above this score starts a track", lo=0, hi=1)
    # --- birth and death ---
    track_buffer: int = key(30, "frames a lost track is kept (predicted by the Kalman filter) before deletion",
                            lo=0, hi=10000)
    # --- camera-motion compensation ---
    camera_motion: bool = key(True, "estimate the global motion between frames and move predicted tracks with it")
    cmc_method: str = key("sparse", "sparse: optical flow of corners + RANSAC partial affine (BoT-SORT); phase: "
                                    "phase correlation, translation only, ~3x cheaper", choices=("sparse", "phase"))
    cmc_downscale: int = key(4, "frames are shrunk by this factor before the motion is estimated (speed)", lo=1,
                             hi=16)
    cmc_max_corners: int = key(100, "sparse: most corners followed by optical flow", lo=10, hi=10000)

    def __post_init__(self):
        for f in fields(self):
            m, v = f.metadata, getattr(self, f.name)
            if m["choices"] and v not in m["choices"]:
                raise TrackerConfigError(f"'{f.name}': must be one of {list(m['choices'])}, got {v!r}")
            if m["lo"] is not None and not m["lo"] <= v:
                raise TrackerConfigError(f"'{f.name}': must be >= {m['lo']}, got {v}")
            if m["hi"] is not None and not v <= m["hi"]:
                raise TrackerConfigError(f"'{f.name}': must be <= {m['hi']}, got {v}")
        if self.track_low_thresh > self.track_high_thresh:
            raise TrackerConfigError(f"'track_low_thresh': {self.track_low_thresh} is above track_high_thresh "
                                     f"{self.track_high_thresh}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FIELDS = {f.name: f for f in fields(TrackerConfig)}


def _coerce(name: str, value: Any, where: str) -> Any:
    """``value`` as the declared type of ``name`` (bool, int, float or str); a mismatch is a TrackerConfigError."""
    default = FIELDS[name].default
    assert default is not MISSING
    kind = type(default)
    ok = (isinstance(value, bool) if kind is bool else isinstance(value, str) if kind is str
          else isinstance(value, int) and not isinstance(value, bool) if kind is int
          else isinstance(value, int | float) and not isinstance(value, bool))
    if not ok:
        raise TrackerConfigError(f"{where}: '{name}' must be a {kind.__name__}, got {value!r}")
    return float(value) if kind is float else value


def load_tracker_config(source: str | Path | dict | TrackerConfig | None = None) -> TrackerConfig:
    """A validated TrackerConfig from a YAML path (or a bare name found in ``trackers/``, with or without .yaml),
    a dict, a TrackerConfig, or None (``trackers/bytetrack-tiny.yaml``). Keys left out take their defaults.

    Raises TrackerConfigError (unknown key, wrong type, out of range, not YAML, not found) naming the file and key.
    """
    if isinstance(source, TrackerConfig):
        return source
    if isinstance(source, dict):
        where, data = "<dict>", dict(source)
    else:
        path = Path(source) if source is not None else DEFAULT_TRACKER
        for cand in (TRACKER_DIR / path.name, TRACKER_DIR / f"{path.name}.yaml"):
            if not path.exists() and len(path.parts) == 1 and cand.is_file():
                path = cand
        if not path.is_file():
            raise TrackerConfigError(f"tracker YAML not found: {source} (shipped: "
                                     f"{sorted(p.stem for p in TRACKER_DIR.glob('*.yaml'))})")
        where = str(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise TrackerConfigError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise TrackerConfigError(f"{where}: expected a mapping of key: value, got {type(data).__name__}")
    unknown = [k for k in data if k not in FIELDS]
    if unknown:
        raise TrackerConfigError(f"{where}: unknown tracker key '{unknown[0]}'; valid keys are {sorted(FIELDS)}")
    values = {k: _coerce(k, v, where) for k, v in data.items()}
    try:
        return TrackerConfig(**values)
    except TrackerConfigError as e:
        raise TrackerConfigError(f"{where}: {e}") from None


def docs_table() -> str:
    """The Markdown table of every key (default, range, meaning) for docs/tracking.md."""
    rows = ["| key | default | range | meaning |", "| --- | --- | --- | --- |"]
    for f in fields(TrackerConfig):
        m = f.metadata
        rng = ", ".join(m["choices"]) if m["choices"] else (
            "true, false" if isinstance(f.default, bool) else f"[{m['lo']}, {m['hi'] if m['hi'] is not None else '∞'}]")
        rows.append(f"| `{f.name}` | {str(f.default).lower() if isinstance(f.default, bool) else f.default} | {rng} "
                    f"| {m['meaning']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.stdout.write(docs_table() + "\n")
