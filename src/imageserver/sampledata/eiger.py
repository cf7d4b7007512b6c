"""Synthetic Eiger2 series laid out as a Dectris DCU 1.8 detector writes them.

A NeXus master (``{stem}_master.h5``) holds the metadata and the pixel mask and links to data
files (``{stem}_data_000001.h5`` …) whose ``/entry/data/data`` stacks hold the frames,
bitshuffle-LZ4 compressed one frame per chunk. Gaps and dead pixels carry the dtype's maximum,
as the detector writes them with the mask applied, so readers see what they see on a beamline.

The master also carries the NXmx geometry that DIALS (dxtbx's NXmx reader) builds its models
from: the detector's translation along the beam (``depends_on``), one detector module whose
offset puts the beam centre on the beam, the pixel mask under the detector, and the sample's
omega axis as the rotation of the scan. NeXus axes are McStas (x horizontal, y up, z along the
beam), so the fast pixel direction is -x and the slow one -y, as on a Dectris detector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import numpy.typing as npt

from imageserver.formats.base import HC_EV_ANGSTROM
from imageserver.sampledata.pattern import Geometry, module_gaps, synth_frame

MODULE_W_PX = 1028
MODULE_H_PX = 512
GAP_X_PX = 12
GAP_Y_PX = 38

MASK_GAP = 1
MASK_DEAD = 2
MASK_HOT = 8

SATURATION_32BIT = 2**20
SATURATION_16BIT = 65534

OMEGA_STEP_DEG = 0.1
ROTATION_AXIS = (-1.0, 0.0, 0.0)
"""The goniometer's axes at zero, in McStas coordinates: horizontal, DIALS's usual (1, 0, 0)."""
FRAME_TIME_S = 0.1
READOUT_TIME_S = 1e-7
SENSOR_THICKNESS_M = 450e-6
_DEAD_PIXELS = 300
_HOT_PIXELS = 200


def write_eiger_series(
    directory: Path,
    stem: str,
    *,
    geometry: Geometry,
    n_frames: int,
    bit_depth: int = 32,
    frames_per_file: int | None = None,
    seed: int = 2026,
) -> Path:
    """Write a master and its data files into ``directory``; return the master's path.

    Frames are split over data files of ``frames_per_file`` frames (default: half the series,
    so two data files as soon as there are two frames).
    """
    if bit_depth not in (16, 32):
        raise ValueError(f"an Eiger writes 16- or 32-bit images, not {bit_depth}-bit")
    if n_frames < 1:
        raise ValueError(f"a series needs at least one frame, not {n_frames}")
    per_file = math.ceil(n_frames / 2) if frames_per_file is None else frames_per_file
    if per_file < 1:
        raise ValueError(f"frames_per_file must be positive, not {frames_per_file}")
    directory.mkdir(parents=True, exist_ok=True)
    mask = eiger_pixel_mask(geometry.width_px, geometry.height_px, seed)
    markers = _markers_of(mask, bit_depth)
    data_names: list[str] = []
    for file_index, low in enumerate(range(1, n_frames + 1, per_file), start=1):
        high = min(low + per_file - 1, n_frames)
        name = f"{stem}_data_{file_index:06d}.h5"
        numbers = range(low, high + 1)
        _write_data_file(directory / name, geometry, markers, numbers, bit_depth, seed)
        data_names.append(name)
    master = directory / f"{stem}_master.h5"
    with h5py.File(master, "w") as f:
        _write_master(f, geometry, mask, data_names, n_frames, bit_depth, markers.saturation)
    return master


def eiger_pixel_mask(width_px: int, height_px: int, seed: int) -> npt.NDArray[np.uint32]:
    """Dectris pixel mask: 1 on module gaps, 2 on dead and 8 on hot pixels (deterministic)."""
    gaps = module_gaps(width_px, height_px, MODULE_W_PX, MODULE_H_PX, GAP_X_PX, GAP_Y_PX)
    mask = gaps.astype(np.uint32) * np.uint32(MASK_GAP)
    n_sensitive = gaps.size - int(np.count_nonzero(gaps))
    n_dead = min(_DEAD_PIXELS, max(1, n_sensitive // 1000))
    n_hot = min(_HOT_PIXELS, max(1, n_sensitive // 1000))
    if n_dead + n_hot > n_sensitive:  # a detector of a pixel or two: nothing to spoil
        n_dead = n_hot = 0
    chosen = _distinct_sensitive_pixels(gaps.reshape(-1), n_dead + n_hot, seed)
    flat = mask.reshape(-1)
    flat[chosen[:n_dead]] = MASK_DEAD
    flat[chosen[n_dead:]] = MASK_HOT
    return mask


def _distinct_sensitive_pixels(
    flat_gaps: npt.NDArray[np.bool_], count: int, seed: int
) -> npt.NDArray[np.int64]:
    """``count`` distinct flat indices off the gaps, by rejection (listing a 16M mask is slow)."""
    rng = np.random.default_rng(seed)
    picked = np.empty(0, dtype=np.int64)
    while picked.size < count:
        draw = rng.integers(0, flat_gaps.size, 2 * count + 16)
        picked = np.concatenate([picked, draw[~flat_gaps[draw]]])
        _, first_seen = np.unique(picked, return_index=True)
        picked = picked[np.sort(first_seen)]
    return picked[:count]


@dataclass(frozen=True)
class _Markers:
    """Where the detector writes its marker; counts clip at saturation, where hot pixels sit."""

    marked: npt.NDArray[np.intp]
    hot: npt.NDArray[np.intp]
    marker_value: int
    saturation: int


def _markers_of(mask: np.ndarray, bit_depth: int) -> _Markers:
    """Where a detector of this bit depth marks gaps, dead and hot pixels in its frames."""
    flat_mask = mask.reshape(-1)
    return _Markers(
        marked=np.flatnonzero((flat_mask == MASK_GAP) | (flat_mask == MASK_DEAD)),
        hot=np.flatnonzero(flat_mask == MASK_HOT),
        marker_value=(1 << bit_depth) - 1,
        saturation=SATURATION_32BIT if bit_depth == 32 else SATURATION_16BIT,
    )


def _write_data_file(
    path: Path, geometry: Geometry, markers: _Markers, numbers: range, bit_depth: int, seed: int
) -> None:
    """One ``_data_NNNNNN.h5``: frames ``numbers`` (1-based) with gaps and bad pixels marked."""
    dtype = np.dtype(np.uint32 if bit_depth == 32 else np.uint16)
    shape = (geometry.height_px, geometry.width_px)
    with h5py.File(path, "w") as f:
        entry = _group(f, "entry", "NXentry")
        data = _group(entry, "data", "NXdata")
        dataset = data.create_dataset(
            "data",
            shape=(len(numbers), *shape),
            dtype=dtype,
            chunks=(1, *shape),
            **hdf5plugin.Bitshuffle(nelems=0, cname="lz4"),
        )
        dataset.attrs["image_nr_low"] = np.int32(numbers.start)
        dataset.attrs["image_nr_high"] = np.int32(numbers.stop - 1)
        for slot, number in enumerate(numbers):
            counts = synth_frame(geometry, number - 1, markers.saturation, seed)
            frame = counts.astype(dtype)
            pixels = frame.reshape(-1)
            pixels[markers.marked] = markers.marker_value
            pixels[markers.hot] = markers.saturation
            dataset[slot] = frame


def _write_master(
    f: h5py.File,
    geometry: Geometry,
    mask: npt.NDArray[np.uint32],
    data_names: list[str],
    n_frames: int,
    bit_depth: int,
    saturation: int,
) -> None:
    """The NeXus/DCU 1.8 master: metadata, the pixel mask and links to the data files."""
    entry = _group(f, "entry", "NXentry")
    _text(entry, "definition", "NXmx")
    data = _group(entry, "data", "NXdata")
    for index, name in enumerate(data_names, start=1):
        data[f"data_{index:06d}"] = h5py.ExternalLink(name, "/entry/data/data")
    instrument = _group(entry, "instrument", "NXinstrument")
    beam = _group(instrument, "beam", "NXbeam")
    _number(beam, "incident_wavelength", geometry.wavelength_a, np.float32, "angstrom")
    detector = _group(instrument, "detector", "NXdetector")
    _write_detector(detector, geometry, bit_depth, saturation)
    _write_detector_specific(detector, geometry, mask, n_frames)
    detector["pixel_mask"] = detector["detectorSpecific/pixel_mask"]  # one mask, two names
    _write_detector_position(detector, geometry)
    sample = _group(entry, "sample", "NXsample")
    goniometer = _group(sample, "goniometer", "NXtransformations")
    # omega scans. Its angles are float64 where the DCU writes float32: DIALS 3.12 (dxtbx
    # 3.11) cannot make a scan of float32 angles (a boost argument error in dials.import).
    omega = _write_rotation(goniometer, "omega", n_frames, 1.0, angles=np.float64)
    _write_rotation(goniometer, "phi", n_frames, 0.0)
    _write_rotation(goniometer, "chi", n_frames, 0.0)
    _text(sample, "depends_on", omega.name)
    detector_goniometer = _group(detector, "goniometer", "NXtransformations")
    _write_rotation(detector_goniometer, "two_theta", n_frames, 0.0)


def _write_detector(
    detector: h5py.Group, geometry: Geometry, bit_depth: int, saturation: int
) -> None:
    photon_energy_ev = HC_EV_ANGSTROM / geometry.wavelength_a
    _number(detector, "beam_center_x", geometry.beam_x_px, np.float32, "pixel")
    _number(detector, "beam_center_y", geometry.beam_y_px, np.float32, "pixel")
    _number(detector, "bit_depth_image", bit_depth, np.int32)
    _number(detector, "bit_depth_readout", 16, np.int32)
    _number(detector, "count_time", FRAME_TIME_S - READOUT_TIME_S, np.float32, "s")
    _number(detector, "frame_time", FRAME_TIME_S, np.float32, "s")
    _text(detector, "description", f"Dectris EIGER2 Si {_size_name(geometry)}")
    _number(detector, "detector_distance", geometry.distance_m, np.float32, "m")
    _number(detector, "distance", geometry.distance_m, np.float32, "m")
    _text(detector, "detector_number", "E-32-0131")
    _number(detector, "detector_readout_time", READOUT_TIME_S, np.float32, "s")
    _text(detector, "sensor_material", "Si")
    _number(detector, "sensor_thickness", SENSOR_THICKNESS_M, np.float32, "m")
    _number(detector, "x_pixel_size", geometry.pixel_size_m, np.float32, "m")
    _number(detector, "y_pixel_size", geometry.pixel_size_m, np.float32, "m")
    _number(detector, "saturation_value", saturation, np.int32)
    # NXmx's lower bound of valid counts, which later dxtbx assumes for DECTRIS files without
    # it. Without it DIALS 3.12 (dxtbx 3.11) trusts the negative numbers it makes of the two
    # top 16-bit counts (a saturated 65534 becomes -2) and finds spots in them.
    _number(detector, "underload_value", 0, np.int32)
    _number(detector, "threshold_energy", photon_energy_ev / 2, np.float32, "eV")
    for flag in (
        "pixel_mask_applied",
        "flatfield_correction_applied",
        "virtual_pixel_correction_applied",
    ):
        _number(detector, flag, 1, np.int32)


def _write_detector_specific(
    detector: h5py.Group, geometry: Geometry, mask: npt.NDArray[np.uint32], n_frames: int
) -> None:
    specific = _group(detector, "detectorSpecific", "NXcollection")
    _text(specific, "software_version", "1.8.0")
    _number(specific, "nimages", n_frames, np.uint32)
    _number(specific, "ntrigger", 1, np.uint32)
    _number(specific, "x_pixels_in_detector", geometry.width_px, np.uint32)
    _number(specific, "y_pixels_in_detector", geometry.height_px, np.uint32)
    specific.create_dataset(
        "pixel_mask", data=mask, chunks=mask.shape, compression="gzip", compression_opts=4
    )
    _number(specific, "number_of_excluded_pixels", int(np.count_nonzero(mask)), np.uint32)
    _number(specific, "photon_energy", HC_EV_ANGSTROM / geometry.wavelength_a, np.float32, "eV")
    _text(specific, "data_collection_date", "2026-01-15T10:22:31.184+01:00")
    _number(specific, "frame_count_time", FRAME_TIME_S - READOUT_TIME_S, np.float32, "s")
    _number(specific, "frame_period", FRAME_TIME_S, np.float32, "s")
    _text(specific, "trigger_mode", "exts")
    _text(specific, "element", "Se")
    _text(specific, "compression", "bslz4")
    _number(specific, "auto_summation", 1, np.int32)


def _write_detector_position(detector: h5py.Group, geometry: Geometry) -> None:
    """The NXmx chain placing the pixels: pixel directions <- module offset <- translation.

    The detector sits ``distance`` along the beam; the module's offset moves its first pixel's
    corner so that the beam meets the panel at the beam centre (pixel units, from the corner
    of the first pixel, as dxtbx counts). The numbers are the header's float32 ones, so DIALS's
    beam centre, distance and pixel size are the header's to float32 precision.
    """
    transformations = _group(detector, "transformations", "NXtransformations")
    translation_path = f"{transformations.name}/translation"
    _axis(
        transformations,
        "translation",
        geometry.distance_m,
        vector=(0.0, 0.0, 1.0),
        depends_on=".",
    )
    _text(detector, "depends_on", translation_path)
    module = _group(detector, "module", "NXdetector_module")
    shape = (geometry.height_px, geometry.width_px)  # slow, fast: as data_origin and the data
    module.create_dataset("data_origin", data=np.zeros(2, dtype=np.uint32))
    module.create_dataset("data_size", data=np.array(shape, dtype=np.uint32))
    module.create_dataset("data_stride", data=np.ones(2, dtype=np.uint32))
    _number(module, "module_index", 0, np.uint32)
    pixel_m = float(np.float32(geometry.pixel_size_m))  # as stored in x/y_pixel_size
    beam_x = float(np.float32(geometry.beam_x_px))
    beam_y = float(np.float32(geometry.beam_y_px))
    _axis(
        module,
        "module_offset",
        0.0,
        vector=(1.0, 0.0, 0.0),
        depends_on=translation_path,
        offset=(beam_x * pixel_m, beam_y * pixel_m, 0.0),
    )
    offset_path = f"{module.name}/module_offset"
    pixel = geometry.pixel_size_m
    _axis(module, "fast_pixel_direction", pixel, vector=(-1.0, 0.0, 0.0), depends_on=offset_path)
    _axis(module, "slow_pixel_direction", pixel, vector=(0.0, -1.0, 0.0), depends_on=offset_path)


def _axis(
    group: h5py.Group,
    name: str,
    value_m: float,
    *,
    vector: tuple[float, float, float],
    depends_on: str,
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> None:
    """An NXtransformations translation of ``value_m`` metres along ``vector``."""
    _number(group, name, value_m, np.float32, "m")
    attrs = group[name].attrs
    attrs["transformation_type"] = np.bytes_(b"translation")
    attrs["vector"] = np.array(vector)
    attrs["offset"] = np.array(offset)
    attrs["offset_units"] = np.bytes_(b"m")
    attrs["depends_on"] = np.bytes_(depends_on.encode("ascii"))


def _write_rotation(
    group: h5py.Group,
    axis: str,
    n_frames: int,
    step_scale: float,
    *,
    angles: type[np.generic] = np.float32,
) -> h5py.Dataset:
    """Per-frame start and end angles (float32 as the DCU writes them, unless ``angles``),
    the step and ranges; returns the start angles, a rotation about `ROTATION_AXIS`."""
    step_deg = OMEGA_STEP_DEG * step_scale
    start_deg = np.arange(n_frames, dtype=np.float64) * step_deg
    for name, values in ((axis, start_deg), (f"{axis}_end", start_deg + step_deg)):
        dataset = group.create_dataset(name, data=values.astype(angles))
        dataset.attrs["units"] = np.bytes_(b"degree")
    start = group[axis]
    start.attrs["transformation_type"] = np.bytes_(b"rotation")
    start.attrs["vector"] = np.array(ROTATION_AXIS)
    start.attrs["offset"] = np.zeros(3)
    start.attrs["depends_on"] = np.bytes_(b".")
    _number(group, f"{axis}_increment", step_deg, np.float32, "degree")
    _number(group, f"{axis}_range_average", step_deg, np.float32, "degree")
    _number(group, f"{axis}_range_total", step_deg * n_frames, np.float32, "degree")
    return start


def _size_name(geometry: Geometry) -> str:
    """'16M', '4M', '500K': half a megapixel per 1028 x 512 module, as Dectris names models."""
    modules_x = math.ceil((geometry.width_px + GAP_X_PX) / (MODULE_W_PX + GAP_X_PX))
    modules_y = math.ceil((geometry.height_px + GAP_Y_PX) / (MODULE_H_PX + GAP_Y_PX))
    modules = modules_x * modules_y
    return f"{modules // 2}M" if modules >= 2 else "500K"


def _group(parent: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    group = parent.create_group(name)
    group.attrs["NX_class"] = np.bytes_(nx_class.encode("ascii"))
    return group


def _text(group: h5py.Group, name: str, value: str) -> None:
    """A fixed-length ASCII string dataset, as Dectris writes every string."""
    group.create_dataset(name, data=np.bytes_(value.encode("ascii")))


def _number(
    group: h5py.Group,
    name: str,
    value: float,
    dtype: type[np.generic],
    units: str | None = None,
) -> None:
    dataset = group.create_dataset(name, data=np.array(value, dtype=dtype))
    if units is not None:
        dataset.attrs["units"] = np.bytes_(units.encode("ascii"))


class LiveEigerWriter:
    """A detector writing a series as it goes: the master first, linking one data file, then
    each frame appended to that file in HDF5's SWMR mode (resize, write, flush), so readers
    see every flushed frame while the file stays open for writing.

    Frames are compressed once (``distinct_frames`` of them) and written as raw chunks, as
    the detector hands the writer its compressed images: writing keeps up with 10 Hz.
    """

    def __init__(
        self,
        directory: Path,
        stem: str,
        *,
        geometry: Geometry,
        planned_frames: int,
        bit_depth: int = 32,
        distinct_frames: int = 2,
        seed: int = 2026,
    ) -> None:
        if bit_depth not in (16, 32):
            raise ValueError(f"an Eiger writes 16- or 32-bit images, not {bit_depth}-bit")
        directory.mkdir(parents=True, exist_ok=True)
        self.shape = (geometry.height_px, geometry.width_px)
        self.dtype = np.dtype(np.uint32 if bit_depth == 32 else np.uint16)
        mask = eiger_pixel_mask(geometry.width_px, geometry.height_px, seed)
        markers = _markers_of(mask, bit_depth)
        self._chunks = [
            _compressed_chunk(
                _marked_frame(geometry, markers, number, self.dtype, seed), self.dtype
            )
            for number in range(1, distinct_frames + 1)
        ]
        self.data_path = directory / f"{stem}_data_000001.h5"
        self._file = h5py.File(self.data_path, "w", libver="latest")
        data = _group(_group(self._file, "entry", "NXentry"), "data", "NXdata")
        self._dataset = data.create_dataset(
            "data",
            shape=(0, *self.shape),
            maxshape=(None, *self.shape),
            dtype=self.dtype,
            chunks=(1, *self.shape),
            **hdf5plugin.Bitshuffle(nelems=0, cname="lz4"),
        )
        # No image_nr_high: attributes cannot change in SWMR mode; readers count the frames.
        self._dataset.attrs["image_nr_low"] = np.int32(1)
        self._file.swmr_mode = True
        self.master = directory / f"{stem}_master.h5"
        with h5py.File(self.master, "w") as f:
            names = [self.data_path.name]
            _write_master(f, geometry, mask, names, planned_frames, bit_depth, markers.saturation)
        self.frames_written = 0

    def write_frame(self) -> int:
        """Append the next frame and flush it; its number (from 1)."""
        slot = self.frames_written
        self._dataset.resize(slot + 1, axis=0)
        chunk = self._chunks[slot % len(self._chunks)]
        self._dataset.id.write_direct_chunk((slot, 0, 0), chunk)
        self._dataset.flush()
        self.frames_written = slot + 1
        return self.frames_written

    def close(self) -> None:
        self._file.close()


def _marked_frame(
    geometry: Geometry, markers: _Markers, number: int, dtype: np.dtype, seed: int
) -> npt.NDArray[np.generic]:
    frame = synth_frame(geometry, number - 1, markers.saturation, seed).astype(dtype)
    pixels = frame.reshape(-1)
    pixels[markers.marked] = markers.marker_value
    pixels[markers.hot] = markers.saturation
    return frame


def _compressed_chunk(frame: npt.NDArray[np.generic], dtype: np.dtype) -> bytes:
    """The bitshuffle-LZ4 chunk HDF5 would store for ``frame`` (made in memory)."""
    with h5py.File("chunk", "w", driver="core", backing_store=False) as scratch:
        dataset = scratch.create_dataset(
            "data",
            data=frame[np.newaxis],
            chunks=(1, *frame.shape),
            dtype=dtype,
            **hdf5plugin.Bitshuffle(nelems=0, cname="lz4"),
        )
        _, chunk = dataset.id.read_direct_chunk((0, 0, 0))
    return bytes(chunk)
