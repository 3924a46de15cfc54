"""Dataset tiling (data/tile.py): which tiles each object lands in with its exact clipped coordinates (computed by
hand), counts, ignore areas, file layout, determinism, idempotence, refusals, and the pairing with sliced
inference: a model that predicts exactly the tile labels, run through utils/infer/slicing.py on the full image, gives
each object once; ``val.py --slice`` on the full images (the tiled dataset's untiled val split) recovers boxes placed
across tile borders once.

Scene: a 1000 x 700 px image, tiles of 400 px with overlap 0.2 -> starts x 0, 320, 600 and y 0, 300, i.e. tiles
x [0,400] [320,720] [600,1000] and y [0,400] [300,700] (overlaps 80 px in x, 100 px in y)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data.prepare import check_dataset
from data.tile import main, tile_areas, tile_dataset, tile_labels, tile_stem
from tests.infer.test_slicing import SquareFinder
from utils.dataset.sources import imread
from utils.infer.slicing import make_tiles, sliced_detect
from utils.ops.boxes import box_iou

W, H, SIZE, OVERLAP = 1000, 700, 400, 0.2
# name: (cls, x1, y1, x2, y2) original px
OBJ = {"A": (0, 100, 100, 140, 140),   # inside tile (0,0) only
       "B": (1, 380, 50, 420, 90),     # half in tile (0,0) (exactly 0.5: kept, clipped), whole in (320,0)
       "C": (1, 710, 350, 750, 390),   # whole in (600,0) and (600,300); 1/4 in (320,0) and (320,300): dropped
       "D": (0, 290, 270, 340, 330),   # whole in (0,0); 0.5 in (0,300): kept; 0.4 in (320,0), 0.2 in (320,300)
       "E": (1, 100, 450, 600, 650),   # 500 px wide, more than the overlap: clipped in (0,300) 0.6, (320,300) 0.56
       "G": (0, 960, 650, 1000, 700)}  # the image's corner: tile (600,300) only
IGNORE = (0.3, 0.0, 0.5, 0.2)  # normalised: px x 300-500, y 0-140 -> tiles (0,0) and (320,0)
# tile stem -> rows [cls, x, y, w, h] normalised to the 400 px tile, by hand
EXPECTED = {"big_x0_y0": [(0, .3, .3, .1, .1), (1, .975, .175, .05, .1), (0, .7875, .75, .125, .15)],
            "big_x320_y0": [(1, .2, .175, .1, .1)],
            "big_x600_y0": [(1, .325, .925, .1, .1)],
            "big_x0_y300": [(0, .7875, .0375, .125, .075), (1, .625, .625, .75, .5)],
            "big_x320_y300": [(1, .35, .625, .7, .5)],
            "big_x600_y300": [(1, .325, .175, .1, .1), (0, .95, .9375, .1, .125)]}
EXPECTED_IGNORE = {"big_x0_y0": [(.75, 0, 1, .35)], "big_x320_y0": [(0, 0, .45, .35)]}


def yolo_rows(objs: list[tuple], w: int, h: int) -> np.ndarray:
    return np.array([[c, (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]
                     for c, x1, y1, x2, y2 in objs], np.float64).reshape(-1, 5)


def write_rows(path: Path, rows: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{int(r[0])} " + " ".join(f"{v:.10f}" for v in r[1:]) + "\n" for r in rows))


def scene(objs: list[tuple], seed: int = 0) -> np.ndarray:
    """Noise background (0-99, so every tile differs) with the objects filled white."""
    im = np.random.default_rng(seed).integers(0, 100, (H, W, 3), dtype=np.uint8)
    for _, x1, y1, x2, y2 in objs:
        im[y1:y2, x1:x2] = 255
    return im


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path)


def make_dataset(tmp_path: Path) -> Path:
    """train: big.png (the scene, with an ignore file), small.jpg (300 x 200, one object), neg.png (500 x 300, no
    labels); val: scene.png (the scene without E, all class 0: objects smaller than the overlap)."""
    root = tmp_path / "src"
    (root / "images" / "train").mkdir(parents=True)
    (root / "images" / "val").mkdir(parents=True)
    cv2.imwrite(str(root / "images/train/big.png"), scene(list(OBJ.values())))
    write_rows(root / "labels/train/big.txt", yolo_rows(list(OBJ.values()), W, H))
    (root / "labels/train/big.ignore.txt").write_text(" ".join(map(str, IGNORE)) + "\n")
    small = np.random.default_rng(1).integers(0, 100, (200, 300, 3), dtype=np.uint8)
    cv2.imwrite(str(root / "images/train/small.jpg"), small)
    write_rows(root / "labels/train/small.txt", np.array([[1, 0.5, 0.5, 0.2, 0.3]]))
    cv2.imwrite(str(root / "images/train/neg.png"), np.full((300, 500, 3), 50, np.uint8))
    val_objs = [(0, *o[1:]) for k, o in OBJ.items() if k != "E"]
    cv2.imwrite(str(root / "images/val/scene.png"), scene(val_objs, seed=2))
    write_rows(root / "labels/val/scene.txt", yolo_rows(val_objs, W, H))
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: [a, b]\n")
    return root / "data.yaml"


def read_labels(folder: Path, suffix: str = ".txt") -> dict[str, np.ndarray]:
    return {p.name[: -len(suffix)]: np.array([line.split() for line in p.read_text().splitlines()], float)
            for p in sorted(folder.glob(f"*{suffix}")) if suffix != ".txt" or not p.name.endswith(".ignore.txt")}


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_tile_labels_hand_computed():
    lb = yolo_rows(list(OBJ.values()), W, H).astype(np.float32)  # float32 as parse_label_file gives
    tiles = make_tiles(H, W, SIZE, OVERLAP)
    assert tiles.tolist() == [[0, 0, 400, 400], [320, 0, 720, 400], [600, 0, 1000, 400],
                              [0, 300, 400, 700], [320, 300, 720, 700], [600, 300, 1000, 700]]
    per_tile, kept, dropped = tile_labels(lb, W, H, tiles, 0.5)
    for tile, rows in zip(tiles, per_tile):
        np.testing.assert_allclose(rows.reshape(-1, 5), np.array(EXPECTED[tile_stem("big", tile)]).reshape(-1, 5),
                                   atol=1e-6)
    names = list(OBJ)
    assert {k: [tile_stem("big", t) for t in tiles[kept[:, i]]] for i, k in enumerate(names)} == {
        "A": ["big_x0_y0"], "B": ["big_x0_y0", "big_x320_y0"], "C": ["big_x600_y0", "big_x600_y300"],
        "D": ["big_x0_y0", "big_x0_y300"], "E": ["big_x0_y300", "big_x320_y300"], "G": ["big_x600_y300"]}
    assert {k: [tile_stem("big", t) for t in tiles[dropped[:, i]]] for i, k in enumerate(names) if dropped[:, i].any()
            } == {"C": ["big_x320_y0", "big_x320_y300"], "D": ["big_x320_y0", "big_x320_y300"]}
    assert kept.sum() == 10 and dropped.sum() == 4 and kept.any(0).all()

    # stricter: B's half (0,0), D's half (0,300) and both views of E are dropped; E is in no tile at all
    _, kept, dropped = tile_labels(lb, W, H, tiles, 0.9)
    assert kept.sum() == 6 and dropped.sum() == 8 and (~kept.any(0)).tolist() == [False] * 4 + [True, False]
    # min_visible 0: any overlap keeps the object; C now in all 4 tiles, D in all 4 (touching edges do not count)
    _, kept, dropped = tile_labels(lb, W, H, tiles, 0.0)
    assert kept.sum(0).tolist() == [1, 2, 4, 4, 2, 1] and not dropped.any()
    assert [len(r) for r in tile_labels(np.zeros((0, 5)), W, H, tiles, 0.5)[0]] == [0] * 6
    # a sliver (1e-6 px inside tile (0,0)) is no overlap, even at min_visible 0: never a zero-size row on disk
    sliver = yolo_rows([(0, 400 - 1e-6, 10, 420, 30)], W, H)
    per_tile, kept, dropped = tile_labels(sliver, W, H, tiles, 0.0)
    assert kept[:, 0].tolist() == [False, True] + [False] * 4 and not dropped.any()


def test_tile_areas_hand_computed():
    tiles = make_tiles(H, W, SIZE, OVERLAP)
    got = {tile_stem("big", t): tile_areas(np.array([IGNORE]), W, H, t).tolist() for t in tiles}
    assert {k: v for k, v in got.items() if v} == {k: [list(map(float, r)) for r in v]
                                                   for k, v in EXPECTED_IGNORE.items()}
    assert tile_areas(np.zeros((0, 4)), W, H, tiles[0]).shape == (0, 4)


def test_cli_writes_tiles_labels_yaml_and_report(dataset: Path, tmp_path: Path, capsys):
    out = tmp_path / "tiles"
    assert main(["--data", str(dataset), "--size", "400", "--overlap", "0.2", "--min-visible", "0.5",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert ("train: 3 images -> 9 tiles (0 empty skipped), 7 objects -> 11 kept in tiles, 4 dropped from a tile "
            "(under min-visible), 0 lost (in no tile), 2 ignore areas") in text
    assert "val: 1 images -> 6 tiles (0 empty skipped), 5 objects -> 8 kept in tiles, 4 dropped" in text
    train = read_labels(out / "labels" / "train")
    assert sorted(train) == sorted([*EXPECTED, "small_x0_y0", "neg_x0_y0", "neg_x100_y0"])
    for stem, rows in EXPECTED.items():
        np.testing.assert_allclose(train[stem], np.array(rows), atol=1e-6, err_msg=stem)
    np.testing.assert_allclose(train["small_x0_y0"], [[1, 0.5, 0.5, 0.2, 0.3]], atol=1e-6)  # the whole image
    assert train["neg_x0_y0"].size == 0 and train["neg_x100_y0"].size == 0  # negatives kept by default
    ign = read_labels(out / "labels" / "train", ".ignore.txt")
    assert {k: v.tolist() for k, v in ign.items()} == {k: [list(map(float, r)) for r in v]
                                                       for k, v in EXPECTED_IGNORE.items()}
    # pixels: PNG tiles are exact crops; JPEG stays JPEG (quality 95); small images are not padded
    src = imread(str(dataset.parent / "images/train/big.png"))
    assert np.array_equal(imread(str(out / "images/train/big_x320_y300.png")), src[300:700, 320:720])
    jpg = out / "images/train/small_x0_y0.jpg"
    assert jpg.read_bytes()[:2] == b"\xff\xd8" and imread(str(jpg)).shape == (200, 300, 3)
    assert imread(str(out / "images/train/neg_x100_y0.png")).shape == (300, 400, 3)
    # the data YAML loads, with the same names and the tiled splits
    d = check_dataset(out / "data.yaml", autodownload=False)
    assert d["names"] == {0: "a", 1: "b"} and Path(d["train"]) == out / "images" / "train"
    marker = json.loads((out / "tile.json").read_text())
    assert marker["params"]["size"] == 400 and marker["counts"]["train"]["kept"] == 11
    assert not (out / ".tile-incomplete").exists()


def test_skip_empty_and_untiled_split_points_at_originals(dataset: Path, tmp_path: Path):
    out = tmp_path / "tiles"
    r = tile_dataset(dataset, out, SIZE, OVERLAP, 0.5, splits=["train"], skip_empty=True)
    assert list(r.splits) == ["train"] and r.total.tiles == 7 and r.total.skipped_empty == 2
    assert not list((out / "images" / "train").glob("neg_*"))
    d = check_dataset(out / "data.yaml", autodownload=False)
    assert Path(d["val"]) == dataset.parent / "images" / "val" and not (out / "images" / "val").exists()


def test_deterministic_idempotent_and_redone(dataset: Path, tmp_path: Path, capsys):
    a, b = tmp_path / "a" / "tiles", tmp_path / "b" / "tiles"
    tile_dataset(dataset, a, SIZE, OVERLAP, 0.5)
    tile_dataset(dataset, b, SIZE, OVERLAP, 0.5)
    first = tree_bytes(a)
    assert first == tree_bytes(b) and len(first) > 30  # same bytes, YAML and marker included
    mtime = (a / "tile.json").stat().st_mtime_ns
    (a / "note.txt").write_text("kept while up to date")
    assert main(["--data", str(dataset), "--size", "400", "--out", str(a)]) == 0
    assert "already tiled" in capsys.readouterr().out
    assert (a / "tile.json").stat().st_mtime_ns == mtime and (a / "note.txt").exists()
    r = tile_dataset(dataset, a, SIZE, 0.3, 0.5)  # other parameters: redone into a clean folder
    assert not r.up_to_date and not (a / "note.txt").exists()
    assert json.loads((a / "tile.json").read_text())["params"]["overlap"] == 0.3
    # a changed source label file redoes it too
    tile_dataset(dataset, a, SIZE, OVERLAP, 0.5)
    (dataset.parent / "labels/train/small.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    assert not tile_dataset(dataset, a, SIZE, OVERLAP, 0.5).up_to_date
    assert (a / "labels/train/small_x0_y0.txt").read_text() == "0 0.500000 0.500000 0.100000 0.100000\n"


def test_failed_run_leaves_the_previous_tiles_and_killed_run_is_redone(dataset: Path, tmp_path: Path,
                                                                         monkeypatch, capsys):
    import data.tile as tile

    out = tmp_path / "tiles"
    assert main(["--data", str(dataset), "--size", "500", "--out", str(out)]) == 0
    before = tree_bytes(out)
    calls = []

    def failing(path):  # the third image fails while tiling with new parameters
        calls.append(path)
        return None if len(calls) == 3 else imread(path)

    monkeypatch.setattr(tile, "imread", failing)
    assert main(["--data", str(dataset), "--size", "400", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot read the image" in err and Path(calls[2]).name in err
    assert tree_bytes(out) == before  # the previous tiles, byte for byte; no lock left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "tiles"]  # no temporary folder left
    monkeypatch.setattr(tile, "imread", imread)
    (out / "tile.json").unlink()  # as if killed while swapping: no marker, the partial sign, some old files
    (out / ".tile-incomplete").write_text("")
    assert main(["--data", str(dataset), "--size", "400", "--out", str(out)]) == 0
    assert (out / "tile.json").exists() and not (out / ".tile-incomplete").exists()
    assert "already tiled" not in capsys.readouterr().out
    assert json.loads((out / "tile.json").read_text())["params"]["size"] == 400
    assert not list(out.rglob("*_x500_*")) and len(list((out / "images/train").glob("big_*"))) == 6


def test_refuses_foreign_folder_and_bad_input(dataset: Path, tmp_path: Path, capsys):
    def run(*args: str) -> str:
        assert main(["--data", str(dataset), "--size", "400", *args]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("x")
    assert "not written by data.tile" in run("--out", str(foreign))
    assert (foreign / "precious.txt").read_text() == "x" and len(list(foreign.iterdir())) == 1
    assert "holds the source image" in run("--out", str(dataset.parent))
    out = str(tmp_path / "t")
    assert "no 'test' split" in run("--out", out, "--splits", "test")
    assert "--overlap" in run("--out", out, "--overlap", "1.0")
    assert "--min-visible" in run("--out", out, "--min-visible", "1.5")
    assert main(["--data", str(tmp_path / "nope.yaml"), "--out", out]) == 1
    assert "nope.yaml" in capsys.readouterr().err
    bad = dataset.parent / "images/train/zz_broken.png"
    bad.write_bytes(b"not a png")
    assert str(bad) in run("--out", out)
    bad.unlink()
    (dataset.parent / "labels/train/big.ignore.txt").write_text("0.5 0.5 0.1\n")
    assert "big.ignore.txt: line 1" in run("--out", out)


def test_tile_model_through_sliced_inference_gives_each_object_once(dataset: Path, tmp_path: Path):
    """A model that has learnt the tiles perfectly (it returns the label file of the tile it is shown, looked up by
    the tile's pixels), run through utils/infer/slicing.py's sliced inference on the full image: each object narrower
    than the overlap comes out exactly once with its full box, the clipped views of B and D being merged away. E (500
    px, wider than the 80 px overlap) is only ever seen clipped: it stays two fragments, as documented."""
    out = tmp_path / "tiles"
    tile_dataset(dataset, out, SIZE, OVERLAP, 0.5, splits=["train"])
    table = {}
    for f in (out / "images" / "train").glob("big_*.png"):
        rows = np.loadtxt(out / "labels" / "train" / (f.stem + ".txt"), ndmin=2)
        table[hashlib.sha256(imread(str(f)).tobytes()).hexdigest()] = rows

    def tile_model(x: torch.Tensor) -> torch.Tensor:  # (b, 3, 400, 400) RGB [0, 1] -> (b, N, 7) input px
        preds = []
        for im in x:
            bgr = np.ascontiguousarray((im * 255).round().byte().numpy()[::-1].transpose(1, 2, 0))
            rows = table[hashlib.sha256(bgr.tobytes()).hexdigest()]
            p = torch.zeros((len(rows), 7))
            p[:, :4] = torch.from_numpy(rows[:, 1:5]) * SIZE
            p[:, 4] = 0.9
            p[torch.arange(len(rows)), 5 + torch.from_numpy(rows[:, 0]).long()] = 1.0
            preds.append(p)
        out = torch.zeros((len(x), max(len(p) for p in preds), 7))
        for i, p in enumerate(preds):
            out[i, :len(p)] = p
        return out

    det = sliced_detect(imread(str(dataset.parent / "images/train/big.png")), tile_model, imgsz=SIZE,
                        slice_size=SIZE, overlap=OVERLAP)
    truth = torch.tensor([o[1:] for o in OBJ.values()], dtype=torch.float32)
    iou = box_iou(truth, det[:, :4])  # (6 objects, detections)
    small = [k != "E" for k in OBJ]
    assert ((iou[small] > 0.1).sum(1) == 1).all() and (iou[small].max(1).values > 0.99).all()
    assert (det[iou[small].argmax(1), 5] == torch.tensor([o[0] for k, o in OBJ.items() if k != "E"])).all()
    assert len(det) == 5 + 2 and (iou[4] > 0.1).sum() == 2  # E: its two clipped views


def test_val_slice_on_full_images_recovers_border_objects_once(dataset: Path, tmp_path: Path, monkeypatch):
    """Train on tiles, validate sliced on the full images: the tiled dataset's YAML (only train tiled) points val
    at the original scene; ``val.run(slice_size=400)`` with a stub backend (tests/infer/test_slicing.py's SquareFinder)
    finds B, C, D (across tile borders) and A, G exactly once: one saved box per object, IoU > 0.9."""
    import utils.infer.detector as inference
    import val

    class StubBackend(inference._Backend):
        def __init__(self):
            self.device, self.stride, self.nc = torch.device("cpu"), torch.tensor([8.0, 16.0, 32.0]), 2
            self.names, self.hyp, self.finder = {0: "a", 1: "b"}, None, SquareFinder(min_px=5, nc=2)

        def __call__(self, im: torch.Tensor) -> torch.Tensor:
            return self.finder(im)

    out = tmp_path / "tiles"
    tile_dataset(dataset, out, SIZE, OVERLAP, 0.5, splits=["train"])
    for module in (inference, val):  # val.py may import it by name
        monkeypatch.setattr(module, "load_backend", lambda *a, **k: StubBackend(), raising=False)
    r = val.run(str(out / "data.yaml"), weights="stub.pt", imgsz=1000, batch_size=1, workers=0, save_txt=True,
                project=tmp_path / "val", name="exp", plots=False, slice_size=SIZE, slice_overlap=OVERLAP)
    rows = np.loadtxt(tmp_path / "val" / "exp" / "labels" / "scene.txt", ndmin=2)
    xyxy = np.concatenate((rows[:, 1:3] - rows[:, 3:5] / 2, rows[:, 1:3] + rows[:, 3:5] / 2), 1) * [W, H, W, H]
    truth = torch.tensor([o[1:] for k, o in OBJ.items() if k != "E"], dtype=torch.float32)
    iou = box_iou(truth, torch.from_numpy(xyxy).float())
    assert len(rows) == 5 and ((iou > 0.1).sum(1) == 1).all() and (iou.max(1).values > 0.9).all(), iou
    assert r["metrics/recall"] == pytest.approx(1.0) and r["metrics/mAP_0.5"] > 0.99
