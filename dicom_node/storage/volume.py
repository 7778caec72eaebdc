"""The files of one series -> a ``Volume``: voxels in HU (CT) or stored intensity (MR), in a
fixed orientation, with the geometry to map every voxel back to its source frame.

Rules (each broken rule is a VolumeError that says which and where):

* Frames are sorted by their position along the slice normal (``cross(row, column)`` of the
  orientation), never by InstanceNumber. ``voxels[k, j, i]``: k along the normal, j down the
  rows, i along the columns; ``Volume.direction`` columns are the row, column and normal
  vectors, so voxel (k, j, i) sits at ``origin + direction @ ([i, j, k] * spacing[::-1])``.
* Single-frame series and Enhanced multi-frame CT/MR (per-frame functional groups) are read
  alike; compressed pixel data is decoded (pylibjpeg and its plugins, pyjpegls).
* All frames must share orientation (within 1e-4) and size: mixed ones are refused.
* Two frames at the same position: dropped as duplicates when their pixels are identical,
  refused otherwise. A gap (a step over 1.5x the median) is refused as missing slices; steps
  that vary by more than 10% are refused as uneven. Slices must stack along their normal (a
  gantry-tilted stack is refused).
* CT: RescaleSlope/RescaleIntercept applied (HU). Other modalities: stored values.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder

from ai.types import Volume

from ..errors import VolumeError

if TYPE_CHECKING:
    from ai.trust.gate import GateFacts

log = logging.getLogger(__name__)

ORIENTATION_TOLERANCE = 1e-4
#: Elements larger than this are read from the file when used (Pixel Data, mostly).
DEFER_BYTES = 64 * 1024
#: The largest frame decoded (pixels): 4096 x 4096, beyond any CT or MR; a header that claims
#: more is refused before decoding (a decompression bomb).
MAX_FRAME_PIXELS = 4096 * 4096
#: The most voxels one series may declare (e.g. 512 x 512 x 2300): 2.4 GB as float32.
MAX_SERIES_VOXELS = 600_000_000
POSITION_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class FrameRef:
    """Where one k-slice of the volume came from."""

    sop_instance_uid: str
    sop_class_uid: str
    frame_number: int | None  # 1-based for multi-frame instances, None for single-frame


@dataclass(frozen=True)
class SeriesVolume:
    """A volume with the references of its k-slices and one source dataset (header only) per
    instance, in k order of first appearance (what result objects copy patient/study data from)."""

    volume: Volume
    frames: tuple[FrameRef, ...]
    datasets: tuple[Dataset, ...]


@dataclass
class _Frame:
    ref: FrameRef
    position: np.ndarray
    orientation: np.ndarray
    spacing: tuple[float, float]
    thickness: float | None
    slope: float
    intercept: float
    pixels: Any  # a callable returning the 2-D array, so only kept frames are decoded
    shape: tuple[int, int]


def _floats(values: Any, count: int, what: str, where: str) -> np.ndarray:
    try:
        array = np.asarray([float(v) for v in values], dtype=float)
    except (TypeError, ValueError) as exc:
        raise VolumeError(f"{where}: {what} is not numeric: {values!r}") from exc
    if array.shape != (count,):
        raise VolumeError(f"{where}: {what} needs {count} values, has {len(array)}")
    return array


def _first(seq: Any) -> Dataset | None:
    return seq[0] if seq else None


def _frames_of(ds: Dataset, path: str) -> list[_Frame]:
    sop = str(ds.SOPInstanceUID)
    sop_class = str(ds.SOPClassUID)
    try:
        shape = (int(ds.Rows), int(ds.Columns))
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise VolumeError(f"{path}: Rows, Columns or Number of Frames missing or not a number ({exc})") from None
    # What the header claims is checked before anything is decoded: a frame of 65535 x 65535
    # in a few hundred bytes of RLE (a decompression bomb) must not become 8 GB of memory.
    if shape[0] * shape[1] > MAX_FRAME_PIXELS or min(shape) < 1:
        raise VolumeError(f"{path}: declares {shape[0]} x {shape[1]} pixels per frame; this node decodes frames of "
                          f"1 to {MAX_FRAME_PIXELS} pixels (4096 x 4096)")
    if n_frames < 1 or n_frames * shape[0] * shape[1] > MAX_SERIES_VOXELS:
        raise VolumeError(f"{path}: declares {n_frames} frame(s) of {shape[0]} x {shape[1]}: more than the "
                          f"{MAX_SERIES_VOXELS} voxels a series may have here")
    if "PerFrameFunctionalGroupsSequence" in ds:
        shared = _first(ds.get("SharedFunctionalGroupsSequence"))
        frames = []
        cache: dict[str, np.ndarray] = {}

        def pixels_of(index: int) -> Any:
            def load() -> np.ndarray:
                if "all" not in cache:
                    cache["all"] = _decode(ds).reshape(n_frames, *shape)
                return cache["all"][index]
            return load

        for index, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
            def macro(name: str) -> Dataset | None:
                item = _first(group.get(name)) if name in group else None
                if item is None and shared is not None and name in shared:
                    item = _first(shared.get(name))
                return item

            where = f"{path} frame {index + 1}"
            position = macro("PlanePositionSequence")
            orientation = macro("PlaneOrientationSequence")
            measures = macro("PixelMeasuresSequence")
            if position is None or orientation is None or measures is None:
                raise VolumeError(f"{where}: per-frame plane position, orientation or pixel measures missing")
            transform = macro("PixelValueTransformationSequence")
            slope = float(transform.get("RescaleSlope", 1) if transform is not None else 1)
            intercept = float(transform.get("RescaleIntercept", 0) if transform is not None else 0)
            frames.append(_Frame(
                FrameRef(sop, sop_class, index + 1),
                _floats(position.ImagePositionPatient, 3, "ImagePositionPatient", where),
                _floats(orientation.ImageOrientationPatient, 6, "ImageOrientationPatient", where),
                tuple(_floats(measures.PixelSpacing, 2, "PixelSpacing", where)),  # type: ignore[arg-type]
                float(measures.SliceThickness) if measures.get("SliceThickness") not in (None, "") else None,
                slope, intercept, pixels_of(index), shape,
            ))
        return frames
    if n_frames != 1:
        raise VolumeError(f"{path}: multi-frame instance without per-frame functional groups is not a volume we can place")
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if keyword not in ds:
            raise VolumeError(f"{path}: {keyword} missing: the slice cannot be placed in 3-D")
    thickness = ds.get("SliceThickness")
    return [_Frame(
        FrameRef(sop, sop_class, None),
        _floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", path),
        _floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", path),
        tuple(_floats(ds.PixelSpacing, 2, "PixelSpacing", path)),  # type: ignore[arg-type]
        float(thickness) if thickness not in (None, "") else None,
        float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0),
        lambda ds=ds: _decode(ds), shape,
    )]


def _decode(ds: Dataset) -> np.ndarray:
    """The dataset's pixels, decoded without keeping a copy on the dataset (``ds.pixel_array``
    caches one: 150 MB more for a 512x512x300 series)."""
    if "TransferSyntaxUID" not in ds.file_meta:
        return ds.pixel_array
    array, _ = get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds)
    return array


def load_series(paths: Sequence[Path]) -> SeriesVolume:
    """Read the files of one series into a SeriesVolume (see the module docstring's rules)."""
    if not paths:
        raise VolumeError("no files given")
    voxels = 0
    datasets: list[Dataset] = []
    frames: list[_Frame] = []
    series_uids = set()
    for path in paths:
        try:
            # Pixel Data stays on disk until its frame is decoded, and is dropped right after:
            # the series is never held twice (encoded and decoded) in memory.
            ds = dcmread(path, defer_size=DEFER_BYTES)
        except Exception as exc:  # pydicom raises many kinds on a bad file
            raise VolumeError(f"{path}: not a readable DICOM file: {exc}") from exc
        if "PixelData" not in ds:
            raise VolumeError(f"{path}: no Pixel Data")
        series_uids.add(str(ds.get("SeriesInstanceUID", "")))
        added = _frames_of(ds, str(path))
        voxels += sum(f.shape[0] * f.shape[1] for f in added)
        if voxels > MAX_SERIES_VOXELS:
            raise VolumeError(f"the series declares more than {MAX_SERIES_VOXELS} voxels (at {path}); not decoded")
        frames.extend(added)
        datasets.append(ds)
    if len(series_uids) > 1:
        raise VolumeError(f"files from {len(series_uids)} series given; a volume is one series")
    modality = str(datasets[0].get("Modality", ""))
    return _assemble(frames, datasets, modality)


def _assemble(frames: list[_Frame], datasets: list[Dataset], modality: str) -> SeriesVolume:
    reference = frames[0]
    for frame in frames[1:]:
        if frame.shape != reference.shape:
            raise VolumeError(f"mixed frame sizes: {reference.shape} ({reference.ref.sop_instance_uid}) and "
                              f"{frame.shape} ({frame.ref.sop_instance_uid})")
        if np.abs(frame.orientation - reference.orientation).max() > ORIENTATION_TOLERANCE:
            raise VolumeError(f"mixed orientations: {reference.orientation.round(4).tolist()} and "
                              f"{frame.orientation.round(4).tolist()} ({frame.ref.sop_instance_uid})")
        if np.abs(np.asarray(frame.spacing) - np.asarray(reference.spacing)).max() > 1e-3:
            raise VolumeError(f"mixed pixel spacings: {reference.spacing} and {frame.spacing}")

    row = reference.orientation[:3] / np.linalg.norm(reference.orientation[:3])
    col = reference.orientation[3:] / np.linalg.norm(reference.orientation[3:])
    normal = np.cross(row, col)
    frames.sort(key=lambda f: float(frames_position(f, normal)))
    positions = np.asarray([frames_position(f, normal) for f in frames])

    # Duplicates: same position twice.
    kept = [frames[0]]
    for frame, position in zip(frames[1:], positions[1:]):
        if abs(position - frames_position(kept[-1], normal)) <= POSITION_TOLERANCE_MM:
            if np.array_equal(frame.pixels(), kept[-1].pixels()):
                log.warning("Duplicate slice at %.3f mm (%s) dropped", position, frame.ref.sop_instance_uid)
                continue
            raise VolumeError(f"two different slices at the same position {position:.3f} mm: "
                              f"{kept[-1].ref.sop_instance_uid} and {frame.ref.sop_instance_uid}")
        kept.append(frame)
    frames = kept
    positions = np.asarray([frames_position(f, normal) for f in frames])

    # The stack must run along the normal (no gantry tilt / shear).
    for frame in frames[1:]:
        offset = frame.position - frames[0].position
        in_plane = offset - np.dot(offset, normal) * normal
        if np.linalg.norm(in_plane) > max(0.01, 0.01 * np.linalg.norm(offset)):
            raise VolumeError(f"slices do not stack along their normal (in-plane offset {np.linalg.norm(in_plane):.2f} mm at "
                              f"{frame.ref.sop_instance_uid}: gantry tilt or mixed stacks)")

    if len(frames) > 1:
        steps = np.diff(positions)
        median = float(np.median(steps))
        gaps = np.nonzero(steps > 1.5 * median)[0]
        if len(gaps):
            first = int(gaps[0])
            raise VolumeError(f"missing slice(s): a gap of {steps[first]:.2f} mm between positions {positions[first]:.2f} and "
                              f"{positions[first + 1]:.2f} mm, where slices are {median:.2f} mm apart")
        if (np.abs(steps - median) > 0.1 * median).any():
            raise VolumeError(f"uneven slice spacing: steps from {steps.min():.3f} to {steps.max():.3f} mm")
        slice_spacing = float(positions[-1] - positions[0]) / (len(frames) - 1)
    else:
        slice_spacing = float(frames[0].thickness or 1.0)

    rescale = modality == "CT"
    voxels = np.empty((len(frames), *reference.shape), dtype=np.float32)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    for k, frame in enumerate(frames):
        data = np.asarray(frame.pixels(), dtype=np.float32)
        if data.ndim != 2:
            raise VolumeError(f"{frame.ref.sop_instance_uid}: frame is not a single-sample 2-D image (shape {data.shape})")
        voxels[k] = data * frame.slope + frame.intercept if rescale else data
        if frame.ref.frame_number is None:  # a single-frame instance: its Pixel Data is done with
            source = by_uid[frame.ref.sop_instance_uid]
            if "PixelData" in source:
                del source.PixelData
    direction = np.stack([row, col, normal], axis=1)
    # PixelSpacing is (between rows, between columns) = (j, i).
    volume = Volume(voxels, (float(slice_spacing), float(reference.spacing[0]), float(reference.spacing[1])),
                    tuple(float(x) for x in frames[0].position), direction, modality or "OT", frames[0].thickness)
    ordered: list[Dataset] = []
    seen: set[str] = set()
    for frame in frames:
        uid = frame.ref.sop_instance_uid
        if uid not in seen:
            seen.add(uid)
            ordered.append(by_uid[uid])
    for ds in ordered:  # headers only from here on: the voxels hold the pixels
        if "PixelData" in ds:
            del ds.PixelData
    return SeriesVolume(volume, tuple(f.ref for f in frames), tuple(ordered))


def frames_position(frame: _Frame, normal: np.ndarray) -> float:
    return float(np.dot(frame.position, normal))


def gate_facts(source: SeriesVolume) -> GateFacts:
    """What the series' attributes say, for the input gate (ai/trust/gate.py): read from its
    first instance (and any per-frame functional group of an enhanced one, where it says more)."""
    from ai.trust.gate import GateFacts

    ds = source.datasets[0]

    def text(keyword: str) -> str | None:
        value = ds.get(keyword)
        return None if value in (None, "") else str(value).strip() or None

    thickness = ds.get("SliceThickness")
    shared = ds.get("SharedFunctionalGroupsSequence")
    has_rescale = "RescaleSlope" in ds and "RescaleIntercept" in ds
    if shared and not has_rescale:
        transform = shared[0].get("PixelValueTransformationSequence")
        has_rescale = bool(transform) and "RescaleSlope" in transform[0] and "RescaleIntercept" in transform[0]
    if thickness in (None, "") and shared:
        measures = shared[0].get("PixelMeasuresSequence")
        thickness = measures[0].get("SliceThickness") if measures else None
    agent = text("ContrastBolusAgent")
    if agent is None and "ContrastBolusAgentSequence" in ds and ds.ContrastBolusAgentSequence:
        agent = str(ds.ContrastBolusAgentSequence[0].get("CodeMeaning", "contrast agent"))
    image_type = ds.get("ImageType") or ()
    return GateFacts(
        modality=str(ds.get("Modality", "")),
        body_part_examined=text("BodyPartExamined"),
        slice_thickness_mm=float(thickness) if thickness not in (None, "") else None,
        contrast_agent=agent,
        image_type=tuple(str(v) for v in (image_type if isinstance(image_type, (list, tuple)) else [image_type])),
        has_rescale=has_rescale,
        manufacturer=text("Manufacturer"),
    )
