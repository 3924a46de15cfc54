"""Sliced inference (utils/infer/slicing.py): tile geometry, the merge rule, and end-to-end runs with a stub detector
whose detections are a known function of its input, so that the tiling logic is checked deterministically."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from utils.dataset.augmentations import letterbox
from utils.infer.slicing import cut_flags, make_tiles, merge_detections, sliced_detect, sliced_predictions, tile_starts
from utils.ops.boxes import box_iou, scale_boxes
from utils.ops.nms import non_max_suppression


class SquareFinder:
    """Stub detector: one candidate per 8-connected blob of pixels brighter than 0.5 (channel 0) whose bounding box
    is at least ``min_px`` input px wide and high. Box = the blob's bounding box (input px), class 0, confidence
    0.9 - 0.2 * min(1, area / 100**2) (smaller views score higher, so fragments beat whole views on score)."""

    def __init__(self, min_px: int = 5, nc: int = 3):
        self.min_px, self.nc, self.batches = min_px, nc, []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        per_image = []
        for im in x:
            mask = (im[0] > 0.5).cpu().numpy().astype(np.uint8)
            n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
            rows = []
            for left, top, w, h, _ in stats[1:n]:
                if w >= self.min_px and h >= self.min_px:
                    conf = 0.9 - 0.2 * min(1.0, w * h / 100**2)
                    rows.append([left + w / 2, top + h / 2, w, h, conf, 1.0] + [0.0] * (self.nc - 1))
            per_image.append(torch.tensor(rows, dtype=torch.float32).view(-1, 5 + self.nc))
        n = max(len(r) for r in per_image)
        out = torch.zeros((len(x), n, 5 + self.nc))
        for i, r in enumerate(per_image):
            out[i, :len(r)] = r
        return out


def draw(image: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    for x0, y0, x1, y1 in boxes:
        image[y0:y1, x0:x1] = 255
    return image


# tiles of 2000 px at 640 / 0.2: starts 0, 512, 1024, 1360 -> x spans [0,640] [512,1152] [1024,1664] [1360,2000]
TINY = [(100, 100, 110, 110),     # inside one tile
        (635, 300, 645, 310),     # cut by tile 0's right edge (5 px fragment), whole in tile 1
        (580, 700, 590, 710),     # whole in tiles 0 and 1 (overlap region): a duplicate for NMS
        (507, 900, 517, 910),     # whole in tile 0, 5 px fragment in tile 1
        (1020, 1020, 1030, 1030),  # at a tile corner: one whole view and three fragments
        (1990, 1995, 2000, 2000),  # at the image corner: borders are not cuts
        (1500, 60, 1510, 70)]     # whole in tiles 2 and 3
BIG = (450, 1200, 750, 1500)      # 300 px, wider than the 128 px overlap: cut in every tile holding it


def test_tile_starts_and_grid_hand_computed():
    assert tile_starts(2000, 640, 0.2) == [0, 512, 1024, 1360]
    assert tile_starts(640, 640, 0.2) == [0]
    assert tile_starts(300, 640, 0.2) == [0]
    assert tile_starts(1000, 500, 0.0) == [0, 500]
    tiles = make_tiles(1500, 2000, 640, 0.2)
    assert tiles.shape == (4 * 3, 4)
    assert tiles[:4, 0].tolist() == [0, 512, 1024, 1360] and sorted(set(tiles[:, 1].tolist())) == [0, 512, 860]
    assert ((tiles[:, 2] - tiles[:, 0]) == 640).all() and ((tiles[:, 3] - tiles[:, 1]) == 640).all()
    cover = np.zeros((1500, 2000), bool)
    for x0, y0, x1, y1 in tiles:
        cover[y0:y1, x0:x1] = True
    assert cover.all()
    small = make_tiles(300, 900, 640, 0.2)  # shorter than a tile along y: one clipped row
    assert small.tolist() == [[0, 0, 640, 300], [260, 0, 900, 300]]
    big = make_tiles(10_000, 10_000, 640, 0.2)
    assert len(big) == 20 * 20 and big[:, 2].max() == 10_000 and big[:, 3].max() == 10_000


@pytest.mark.parametrize("args, msg", [((100, 100, 0, 0.2), "slice size"), ((100, 100, 64, 1.0), "overlap"),
                                       ((100, 100, 64, -0.1), "overlap"), ((0, 100, 64, 0.2), "empty image")])
def test_make_tiles_rejects_bad_arguments(args, msg):
    with pytest.raises(ValueError, match=msg):
        make_tiles(*args)


def test_cut_flags_only_interior_edges():
    boxes = torch.tensor([[0.0, 0, 10, 10], [630, 0, 640, 10], [100, 100, 110, 110], [512, 5, 520, 15]])
    # tile [0, 0, 640, 640] of a 2000 x 2000 image: only its right and bottom edges are interior
    assert cut_flags(boxes, (0, 0, 640, 640), (2000, 2000), 2.0).tolist() == [False, True, False, False]
    # tile [512, 0, 1152, 640]: left, right and bottom edges interior (boxes lie inside their tile)
    inner = torch.tensor([[512.0, 5, 520, 15], [600, 0, 610, 10], [1150, 5, 1152, 9], [600, 630, 610, 639]])
    assert cut_flags(inner, (512, 0, 1152, 640), (2000, 2000), 2.0).tolist() == [True, False, True, True]
    # a tile that is the whole image has no interior edge
    assert not cut_flags(boxes, (0, 0, 2000, 2000), (2000, 2000), 2.0).any()


def test_merge_rule_hand_made():
    dets = torch.tensor([[100.0, 100, 130, 130, 0.8, 0],   # 0 whole view
                         [100.0, 100, 130, 130, 0.7, 0],   # 1 duplicate of 0 (IoU 1): NMS removes it
                         [120.0, 100, 130, 130, 0.95, 0],  # 2 cut fragment inside 0, higher score: IoS removes it
                         [110.0, 110, 120, 120, 0.6, 0],   # 3 small object inside 0, not cut: kept
                         [120.0, 100, 130, 130, 0.9, 1],   # 4 cut, but only class 1 here: kept
                         [300.0, 300, 310, 310, 0.5, 2]])  # 5 elsewhere, cut, nothing covers it: kept
    cut = torch.tensor([False, False, True, False, True, True])
    assert merge_detections(dets, cut, 0.45, 0.6).tolist() == [4, 0, 3, 5]
    # class-agnostic: the class-1 fragment is inside the class-0 box too; box 3 (IoU 0.11 with 0) stays
    assert merge_detections(dets, cut, 0.45, 0.6, agnostic=True).tolist() == [0, 3, 5]
    assert merge_detections(dets[:0], cut[:0]).numel() == 0


def whole_image_detect(image: np.ndarray, model, imgsz: int) -> torch.Tensor:
    im, ratio, pad = letterbox(image, imgsz, auto=False)
    x = torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)[::-1])).float()[None] / 255
    det = non_max_suppression(model(x), 0.25, 0.45)[0]
    scale_boxes(x.shape[2:], det[:, :4], image.shape[:2], (ratio, pad))
    return det


def match_each_once(det: torch.Tensor, gt: list[tuple], min_iou: float = 0.9) -> None:
    iou = box_iou(torch.tensor(gt, dtype=torch.float32), det[:, :4])
    assert len(det) == len(gt), f"{len(det)} detections for {len(gt)} objects:\n{det}"
    assert (iou.max(1).values > min_iou).all(), iou.max(1).values
    assert ((iou > 0.1).sum(1) == 1).all(), "an object matched by several detections"


def test_sliced_finds_each_tiny_object_once_that_whole_image_misses():
    image = draw(np.zeros((2000, 2000, 3), np.uint8), TINY)
    model = SquareFinder(min_px=5)
    whole = whole_image_detect(image, model, 640)  # 10 px -> 3.2 px at 640: below the stub's 5 px
    assert len(whole) == 0
    model.batches.clear()
    times = [0.0, 0.0, 0.0]
    det = sliced_detect(image, model, imgsz=640, slice_size=640, overlap=0.2, batch=5, times=times)
    match_each_once(det, TINY, min_iou=0.99)
    assert max(model.batches) <= 5 and sum(model.batches) == 16
    assert all(t > 0 for t in times)
    # classes filter and max_det are honoured
    assert len(sliced_detect(image, model, 640, 640, classes=[1])) == 0
    assert len(sliced_detect(image, model, 640, 640, max_det=3)) == 3


def test_object_wider_than_overlap_needs_the_full_view():
    image = draw(np.zeros((2000, 2000, 3), np.uint8), TINY + [BIG])
    model = SquareFinder(min_px=5)
    whole = whole_image_detect(image, model, 640)
    match_each_once(whole, [BIG], min_iou=0.9)  # the whole image finds the big one only
    det = sliced_detect(image, model, imgsz=640, slice_size=640, overlap=0.2, full=True)
    match_each_once(det, TINY + [BIG], min_iou=0.9)
    # without the whole view the big object is only seen in fragments: no box covers it well
    det = sliced_detect(image, model, imgsz=640, slice_size=640, overlap=0.2, full=False)
    big_iou = box_iou(torch.tensor([BIG], dtype=torch.float32), det[:, :4]).max()
    assert big_iou < 0.9


def test_tiles_are_rescaled_to_the_model_size():
    """Tiles of 320 px upscaled 2x to imgsz 640: a 4 px square becomes 8 px and is found (>= 5 px), boxes come back
    in original pixels."""
    gt = [(400, 400, 404, 404), (317, 50, 321, 54)]  # the second straddles the first tile border (x = 320)
    image = draw(np.zeros((900, 1000, 3), np.uint8), gt)
    det = sliced_detect(image, SquareFinder(min_px=5), imgsz=640, slice_size=320, overlap=0.25)
    match_each_once(det, gt, min_iou=0.8)


@pytest.mark.slow
def test_huge_image_runs_in_chunks():
    image = np.zeros((10_000, 10_000, 3), np.uint8)  # calloc'd: untouched pages cost no memory
    gt = [(9_990, 9_990, 9_998, 9_998), (5_000, 3_000, 5_012, 3_012)]
    draw(image, gt)
    model = SquareFinder(min_px=5)
    det = sliced_detect(image, model, imgsz=640, slice_size=640, overlap=0.2, batch=16)
    match_each_once(det, gt, min_iou=0.99)
    assert max(model.batches) == 16 and sum(model.batches) == 400


def test_sliced_predictions_tensor_api():
    """The val.py form: tiles of a batch of network inputs; NMS of the returned rows gives the merged boxes in
    pixels of the input tensor."""
    gt = [(100, 100, 108, 108), (250, 60, 258, 68)]  # the second is cut by the first tile's border at x = 256
    im = torch.zeros((2, 3, 320, 384))
    im[0, :, 100:108, 100:108] = 1.0
    im[0, :, 60:68, 250:258] = 1.0
    model = SquareFinder(min_px=4)
    pred = sliced_predictions(im, model, slice_size=256, overlap=0.25, tile_imgsz=256, conf_thres=0.25)
    assert pred.shape[0] == 2 and pred.shape[2] == 5 + 3
    out = non_max_suppression(pred, 0.25, 0.45)
    match_each_once(out[0], gt, min_iou=0.99)
    assert len(out[1]) == 0
    assert out[0][:, 5].tolist() == [0.0, 0.0]
