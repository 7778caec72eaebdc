"""Pipelines: a Volume in, Findings out.

``SegmentationPipeline`` runs a model from the registry: pre_process (the card's steps, with a
crop to the body), predict (sliding window), post_process (islands, holes), then maps the label
map back onto the input grid voxel for voxel and measures on the input's own intensities.
``ClassicalCTPipeline`` is the non-learned baseline: body, lungs and bone from HU thresholds
and morphology, for real scans on day one and as a reference for models.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from .inference import release_free_memory, select_device, sliding_window
from .measure import measure_all, probability_score
from .postprocess import components, fill_holes, keep_largest, postprocess, remove_small
from .preprocess import Crop, apply_steps, body_crop, crop, resample_labels
from .registry import ModelCard, load_model
from .types import Findings, LabelInfo, Volume


@dataclass
class Timings:
    stages: dict[str, float] = field(default_factory=dict)

    def mark(self, stage: str, started: float) -> float:
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + now - started
        return now


class SegmentationPipeline:
    """A segmentation model from its card; the model loads on first use, on the chosen device."""

    def __init__(self, card: ModelCard, device: str = "auto") -> None:
        if card.data.task != "segmentation":
            raise ValueError(f"{card.name} is a {card.data.task} model, not a segmentation model")
        self.card = card
        self.device = select_device(device)
        self._model: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def model(self) -> Callable[[torch.Tensor], torch.Tensor]:
        if self._model is None:
            self._model = load_model(self.card, self.device)
        return self._model

    def pre_process(self, volume: Volume) -> tuple[Volume, Volume, Crop]:
        """(model-grid volume in HU, cropped + normalised network input, the crop)."""
        steps = list(self.card.data.preprocessing)
        resample_steps = [s for s in steps if s.get("op") == "resample"]
        other_steps = [s for s in steps if s.get("op") != "resample"]
        grid = apply_steps(volume, resample_steps)
        body = self.card.data.inference.crop_to_body
        region = body_crop(grid, threshold=float(body.get("threshold", -500)), multiple=8) if body else Crop((0, 0, 0), grid.shape)
        return grid, apply_steps(crop(grid, region), other_steps), region

    def predict(self, network_input: Volume) -> np.ndarray:
        spec = self.card.data.inference
        return sliding_window(self.model, network_input.voxels, self.card.classes, patch=spec.patch_size,
                              overlap=spec.overlap, batch_size=spec.batch_size, device=self.device)

    def post_process(self, labels: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
        spec = self.card.data.postprocessing
        hosts = {label: (host.label, host.min_fraction) for label, host in spec.host.items()}
        return postprocess(labels, spacing, spec.min_component_ml, spec.keep_largest, spec.fill_holes, hosts)

    def run(self, volume: Volume) -> Findings:
        timings = Timings()
        started = time.perf_counter()
        grid, network_input, region = self.pre_process(volume)
        grid_shape, grid_spacing = grid.shape, grid.spacing
        del grid
        started = timings.mark("preprocess", started)
        probabilities = self.predict(network_input)
        del network_input
        started = timings.mark("inference", started)
        infos = self.card.label_infos()
        # Keep only what is used later (the label map, the lesion classes' probabilities as
        # float16: they only feed means), and drop the rest before the full-resolution label
        # map exists: memory peaks stay low.
        lesion_probabilities = {info.value: region.paste(probabilities[info.value].astype(np.float16), grid_shape, fill=0)
                                for info in infos if info.lesion}
        labels = probabilities.argmax(axis=0).astype(np.uint8)
        del probabilities
        release_free_memory()
        labels = self.post_process(labels, grid_spacing)
        full = region.paste(labels, grid_shape)
        del labels
        label_map = resample_labels(full, volume.shape)
        del full
        started = timings.mark("postprocess", started)
        measurements = measure_all(label_map, volume, infos, probability_score(lesion_probabilities, volume.shape))
        scores: dict[str, float] = {}
        decided: dict[str, bool] = {}
        for rule in self.card.data.classification:
            lesions = [m.score or 0.0 for m in measurements if m.label == rule.label and m.lesion_index is not None]
            scores[rule.name] = max(lesions, default=0.0)
            decided[rule.name] = scores[rule.name] >= rule.threshold
        timings.mark("measure", started)
        return Findings(label_map, infos, tuple(measurements), scores, decided, self.card.name, self.card.version,
                        extra={"timings": timings.stages, "device": str(self.device)})


BASELINE_LABELS = (
    LabelInfo(1, "body", ("123037004", "SCT", "Anatomical Structure"), ("38266002", "SCT", "Entire body"), (177, 122, 101)),
    LabelInfo(2, "lungs", ("123037004", "SCT", "Anatomical Structure"), ("39607008", "SCT", "Lung"), (128, 174, 128)),
    LabelInfo(3, "bone", ("123037004", "SCT", "Anatomical Structure"), ("272673000", "SCT", "Bone structure"), (241, 214, 145)),
    LabelInfo(4, "lung nodule", ("49755003", "SCT", "Morphologically Altered Structure"), ("27925004", "SCT", "Nodule"),
              (255, 0, 0), lesion=True),
)


class ClassicalCTPipeline:
    """Body (> -500 HU, largest component, holes filled), lungs (air-like voxels enclosed by the
    body, components over 50 mL), bone (> 250 HU, components over 0.5 mL) and lung nodule
    candidates (soft-tissue islands enclosed by lung on their slice, 0.03 mL to 30 mL). No
    learning: it works the same on a phantom and on a real scan, and gives models a reference.
    On real scans vessels seen end-on are nodule candidates too: it is a candidate detector."""

    name = "ct-classical-baseline"
    version = "1.0.0"

    def run(self, volume: Volume) -> Findings:
        started = time.perf_counter()
        hu = volume.voxels
        labelled, count = components(hu > -500)
        body = np.zeros(hu.shape, dtype=bool)
        if count:
            sizes = ndimage.sum_labels(np.ones_like(labelled), labelled, index=np.arange(1, count + 1))
            body = labelled == int(np.argmax(sizes)) + 1
            body = np.asarray([ndimage.binary_fill_holes(s) for s in body])  # slice-wise: lungs are holes in 2-D
        labels = np.zeros(hu.shape, dtype=np.uint8)
        labels[body] = 1
        lungs = body & (hu < -400)
        labels[lungs] = 2
        labels[body & (hu > 250)] = 3
        labels = remove_small(labels, {2: 50.0, 3: 0.5}, volume.spacing)
        labels[(labels == 0) & body] = 1
        labels = fill_holes(keep_largest(labels, [1]), [1])
        lungs = labels == 2
        enclosed = np.asarray([ndimage.binary_fill_holes(s) for s in lungs]) & ~lungs & (hu > -400) & (labels != 3)
        labels[enclosed] = 4
        labels = remove_small(labels, {4: 0.03}, volume.spacing)
        labels[(labels == 0) & body] = 1
        too_big, count = components(labels == 4)
        if count:
            sizes = ndimage.sum_labels(np.ones_like(too_big), too_big, index=np.arange(1, count + 1)) * volume.voxel_volume_ml
            labels[np.isin(too_big, np.flatnonzero(sizes > 30.0) + 1)] = 1
        measurements = measure_all(labels, volume, BASELINE_LABELS)
        return Findings(labels, BASELINE_LABELS, tuple(measurements), {}, {}, self.name, self.version,
                        algorithm_family="Image Processing", extra={"timings": {"total": time.perf_counter() - started}})
