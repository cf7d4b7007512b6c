"""The pixel mask: decoded as h5py decodes it, whatever the layout; read once per distinct
mask; a damaged one refused with a clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from imageserver.errors import CorruptFrameError
from imageserver.formats import eiger_mask
from imageserver.formats.eiger_mask import read_mask

SHAPE = (300, 257)


def mask_values(dtype: Any, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = (rng.random(SHAPE) < 0.05) * rng.integers(1, 1 << 7, SHAPE)
    values[:, 100:108] = 1  # a module gap
    return values.astype(dtype)


def write(path: Path, values: np.ndarray, **layout: Any) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("pixel_mask", data=values, **layout)
    return path


@pytest.mark.parametrize(
    "layout",
    [
        {"chunks": SHAPE, "compression": "gzip"},  # the Dectris layout: the memo's path
        {"chunks": SHAPE},  # one unfiltered chunk
        {},  # contiguous: h5py's read
        {"chunks": (64, 64), "compression": "gzip"},  # several chunks: h5py's read
        {"chunks": SHAPE, "compression": "gzip", "shuffle": True},  # another filter too
    ],
)
@pytest.mark.parametrize("dtype", [np.uint32, np.uint8, np.int32])
def test_every_layout_decodes_as_h5py_does(tmp_path: Path, layout: Any, dtype: Any) -> None:
    values = mask_values(dtype)
    with h5py.File(write(tmp_path / "m.h5", values, **layout)) as f:
        mask = read_mask(f["pixel_mask"], SHAPE, "m.h5")
    assert mask is not None and mask.dtype == np.uint8 and not mask.flags.writeable
    np.testing.assert_array_equal(mask, (values != 0).astype(np.uint8))


def test_a_second_series_with_the_same_mask_reuses_it(tmp_path: Path) -> None:
    values = mask_values(np.uint32)
    layout = {"chunks": SHAPE, "compression": "gzip"}
    first = write(tmp_path / "a.h5", values, **layout)
    second = write(tmp_path / "b.h5", values, **layout)
    other = write(tmp_path / "c.h5", mask_values(np.uint32, seed=2), **layout)
    read = []
    for path in (first, second, other):
        with h5py.File(path) as f:
            read.append(read_mask(f["pixel_mask"], SHAPE, path))
    assert read[0] is read[1]
    assert read[2] is not read[0]
    assert not np.array_equal(read[2], read[0])


def test_the_memo_keeps_a_few_masks(tmp_path: Path) -> None:
    layout = {"chunks": SHAPE, "compression": "gzip"}
    for seed in range(eiger_mask.MEMO_SIZE + 3):
        path = write(tmp_path / f"{seed}.h5", mask_values(np.uint32, seed=100 + seed), **layout)
        with h5py.File(path) as f:
            read_mask(f["pixel_mask"], SHAPE, path)
    assert len(eiger_mask._memo) == eiger_mask.MEMO_SIZE


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[: len(data) // 2], "inflates to"),
        (lambda data: data[:20] + bytes(40) + data[60:], "corrupt|inflates"),
    ],
)
def test_a_damaged_deflated_mask_is_refused(tmp_path: Path, damage: Any, message: str) -> None:
    path = write(tmp_path / "m.h5", mask_values(np.uint32), chunks=SHAPE, compression="gzip")
    with h5py.File(path, "r+") as f:
        dataset = f["pixel_mask"]
        _, data = dataset.id.read_direct_chunk((0, 0))
        dataset.id.write_direct_chunk((0, 0), damage(bytes(data)))
    with h5py.File(path) as f, pytest.raises(CorruptFrameError, match=f"pixel_mask.*({message})"):
        read_mask(f["pixel_mask"], SHAPE, path)


def test_a_mask_of_another_size_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "m.h5", np.zeros((10, 10), np.uint32))
    with h5py.File(path) as f, pytest.raises(CorruptFrameError, match="pixel_mask is"):
        read_mask(f["pixel_mask"], SHAPE, path)
