"""The sample dataset of the demo, tests and benchmarks: one file set per supported format."""

from __future__ import annotations

from pathlib import Path

from imageserver.sampledata.cbf import write_pilatus_cbf
from imageserver.sampledata.eiger import write_eiger_series
from imageserver.sampledata.marccd import write_marccd, write_monitor_tiff
from imageserver.sampledata.pattern import centred_geometry

EIGER_PIXEL_M = 75e-6
EIGER16M_STEM = "eiger16m_001"
EIGER16M_MASTER = f"{EIGER16M_STEM}_master.h5"
EIGER4M16_STEM = "eiger4m_16bit_001"
PILATUS_CBF = "pilatus6m_0001.cbf"
MARCCD_LE = "marccd_0001.mccd"
MARCCD_BE = "marccd_bigendian_0001.mccd"
MONITOR_TIFF = "eiger_monitor_0001.tif"


def write_sample_data(directory: Path, *, n_frames: int = 4, full_size: bool = True) -> list[Path]:
    """Write every sample file into ``directory`` and return the paths a user would open.

    ``full_size=False`` keeps the formats and layouts but shrinks the Eiger and MAR
    detectors (tests); the Pilatus CBF is always a full 6M frame, as its header says.
    """
    directory.mkdir(parents=True, exist_ok=True)
    eiger16m = (
        centred_geometry(4148, 4362, EIGER_PIXEL_M)
        if full_size
        else centred_geometry(2068, 1062, EIGER_PIXEL_M)
    )
    eiger4m = (
        centred_geometry(2068, 2162, EIGER_PIXEL_M)
        if full_size
        else centred_geometry(1028, 512, EIGER_PIXEL_M)
    )
    paths = [
        write_eiger_series(
            directory, EIGER16M_STEM, geometry=eiger16m, n_frames=n_frames, bit_depth=32
        ),
        write_eiger_series(
            directory,
            EIGER4M16_STEM,
            geometry=eiger4m,
            n_frames=max(1, n_frames // 2),
            bit_depth=16,
        ),
        write_pilatus_cbf(directory / PILATUS_CBF),
        write_pilatus_cbf(directory / "pilatus6m_0002.cbf", frame_index=1, compression="bz2"),
        write_marccd(directory / MARCCD_LE, size_px=2048 if full_size else 512, byte_order="<"),
        write_marccd(directory / MARCCD_BE, size_px=1024 if full_size else 256, byte_order=">"),
        write_monitor_tiff(directory / MONITOR_TIFF, 1028, 512, 32),
    ]
    return paths
