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

from .digest import file_digest, rules_digest
from .inference import release_free_memory, select_device, sliding_window
from .lung_density import lung_density
from .measure import measure_all, midline_x, probability_score, with_vessels
from .postprocess import components, postprocess
from .preprocess import Crop, apply_steps, body_crop, crop, resample_labels
from .registry import ModelCard, load_model
from .trust.domain import Domain, TrainingData
from .trust.output_check import check_structures, structure_confidence
from .types import UNCERTAINTY_STEPS, Findings, LabelInfo, Volume


@dataclass
class Timings:
    stages: dict[str, float] = field(default_factory=dict)

    def mark(self, stage: str, started: float) -> float:
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + now - started
        return now


class SegmentationPipeline:
    """A segmentation model from its card; the model loads on first use, on the chosen device."""

    def __init__(self, card: ModelCard, device: str = "auto", uncertainty: bool = False) -> None:
        if card.data.task != "segmentation":
            raise ValueError(f"{card.name} is a {card.data.task} model, not a segmentation model")
        self.card = card
        self.name, self.version = card.name, card.version
        self.domain = card.data.domain
        self.device = select_device(device)
        #: Also return the per-voxel uncertainty (``Findings.uncertainty``): for the
        #: Parametric Map a reader sees; off by default (one byte per input voxel).
        self.uncertainty = uncertainty
        self._model: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def weights_digest(self) -> str:
        """SHA-256 of the card's weights file."""
        return file_digest(self.card.weights_path)

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
        # The model grid's geometry (no voxels): structures are checked there, before the label
        # map is brought to the input's grid (at 512x512x300, 16 times fewer voxels).
        model_grid = Volume(np.zeros((1, 1, 1), dtype=np.float32), grid.spacing, grid.origin, grid.direction)
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
        winning = probabilities.max(axis=0).astype(np.float16)  # for each structure's confidence
        del probabilities
        release_free_memory()
        labels = self.post_process(labels, grid_spacing)
        started = timings.mark("postprocess", started)
        confidence = structure_confidence(labels, winning, infos)
        uncertainty = None
        if self.uncertainty:
            started = timings.mark("output check", started)
            uncertainty = self.uncertainty_map(winning, region, grid_shape, volume.shape)
            started = timings.mark("uncertainty map", started)
        del winning
        labels, verdicts = check_structures(labels, model_grid, infos, confidence, self.card.data.output_checks)
        withheld = {v.name: str(v.withheld) for v in verdicts if v.withheld}
        by_value = {info.value: info.name for info in infos}
        trusted = []
        for rule in self.card.data.classification:
            host = rule.host_label
            host_confidence = None if host is None else confidence.get(host)
            if host is not None and (host_confidence is None or host_confidence < rule.host_min_confidence
                                     or by_value[host] in withheld):
                # Neither "present" nor "absent": a lesion of an organ the model cannot stand behind.
                reason = f"its host, the {by_value[host]}, is not reported with confidence {rule.host_min_confidence:.2f} or more"
                withheld[rule.name] = reason
                if (labels == rule.label).any():
                    withheld.setdefault(by_value[rule.label], reason)
                    labels = np.where(labels == rule.label, 0, labels).astype(labels.dtype)
                continue
            trusted.append(rule)
        started = timings.mark("output check", started)
        full = region.paste(labels, grid_shape)
        del labels
        label_map = resample_labels(full, volume.shape)
        del full
        started = timings.mark("postprocess", started)
        measurements = measure_all(label_map, volume, infos, probability_score(lesion_probabilities, volume.shape))
        scores: dict[str, float] = {}
        decided: dict[str, bool] = {}
        for rule in trusted:
            lesions = [m.score or 0.0 for m in measurements if m.label == rule.label and m.lesion_index is not None]
            scores[rule.name] = max(lesions, default=0.0)
            decided[rule.name] = scores[rule.name] >= rule.threshold
        timings.mark("measure", started)
        return Findings(label_map, infos, tuple(measurements), scores, decided, self.card.name, self.card.version,
                        extra={"timings": timings.stages, "device": str(self.device), "withheld": withheld,
                               "confidence": {by_value[v]: round(c, 3) for v, c in confidence.items()}},
                        uncertainty=uncertainty)

    @staticmethod
    def uncertainty_map(winning: np.ndarray, region: Crop, grid_shape: tuple[int, int, int],
                        shape: tuple[int, int, int]) -> np.ndarray:
        """1 - the winning class's probability, quantised to uint8 and brought to the input's
        grid the way the label map is (nearest neighbour: each voxel gets the uncertainty of
        the model voxel whose label it got). Outside the body crop the model did not run and
        the voxel is background by the crop's HU rule: uncertainty 0."""
        steps = np.rint((1.0 - winning.astype(np.float32)) * UNCERTAINTY_STEPS)
        quantised = np.clip(steps, 0, UNCERTAINTY_STEPS).astype(np.uint8)
        return resample_labels(region.paste(quantised, grid_shape, fill=0), shape)


BASELINE_LABELS = (
    LabelInfo(1, "body", ("123037004", "SCT", "Anatomical Structure"), ("38266002", "SCT", "Entire body"), (177, 122, 101)),
    LabelInfo(2, "lungs", ("123037004", "SCT", "Anatomical Structure"), ("39607008", "SCT", "Lung"), (128, 174, 128)),
    LabelInfo(3, "bone", ("123037004", "SCT", "Anatomical Structure"), ("272673000", "SCT", "Bone structure"), (241, 214, 145)),
    LabelInfo(4, "lung nodule", ("49755003", "SCT", "Morphologically Altered Structure"), ("27925004", "SCT", "Nodule"),
              (255, 0, 0), lesion=True),
)


class ClassicalCTPipeline:
    """Body, lungs, bone and lung nodule candidates from HU and shape alone. No learning: it
    works the same on a phantom and on a real scan, and gives models a reference.

    * body: > -500 HU, the largest component, holes filled slice by slice (lungs are holes in 2-D);
    * lungs: air-like (< -400 HU) components inside the body that look like lung, not gas in the
      stomach or bowel: at least ``LUNG_MIN_ML``, median HU between ``LUNG_MEDIAN_HU`` (aerated
      parenchyma with its vessels, -900 to -700 on real CT) and at most ``LUNG_MAX_PURE_AIR`` of
      their voxels below -950 HU (bowel gas is pure air: 40-70 % below -950 on the real abdomen
      scan, lung bases 0 %); the two largest such components; then the vessels inside them (holes
      of each side's mask on its slice), as a lung mask for volumes and densitometry includes them;
    * bone: > ``BONE_HU`` after an in-plane closing (``BONE_CLOSING`` voxels) and a slice-wise hole
      fill, so the cancellous inside of a vertebral body (80-250 HU on real CT) counts with the
      cortex around it; a component counts only if it holds at least ``BONE_CORTEX_VOXELS``
      voxels over 300 HU (cortex), which keeps enhanced vessels, kidneys and liver out (on the
      real abdomen scan 150 HU gives Dice 0.84 against the reference bones, 250 HU 0.46; on a
      portal-venous phantom 0.94, where 120 HU took half of the 100-HU liver);
    * lung nodule candidates: soft-tissue islands enclosed by lung on their slice, 0.03 to 30 mL,
      kept only when solid at their core (``NODULE_MIN_PEAK_HU``: partial-volume lung at a
      vessel's edge is -400 to -250 HU), round (``NODULE_MAX_ELONGATION``) and surrounded by
      lung in 3-D (``NODULE_MIN_LUNG_SHELL``): vessels seen end-on run on through slices, the
      diaphragm's dome seen at the lung bases is bordered by liver.
    """

    name = "ct-classical-baseline"
    version = "2.1.0"  # 2.1: vessels count as lung; lung densitometry
    algorithm_family = "Image Processing"
    #: HU rules hold on CT of the trunk in Hounsfield units; bone's cortex rule assumes no
    #: arterial-phase vessels (300+ HU) touching bone, so arterial phase is outside.
    domain = Domain(
        modality=["CT"],
        body_regions=["CHEST", "ABDOMEN", "PELVIS"],  # read from the pixels; a head or neck alone is out
        contrast_phases=["non-contrast", "portal-venous", "delayed"],
        slice_thickness_mm=(0.5, 5.0),
        pixel_spacing_mm=(0.3, 3.0),
        body_width_mm=(100.0, 700.0),  # its claims (body, lungs, bone) hold for a child or a limb too
        trained_on=TrainingData(kind="none", description="rules on Hounsfield units; no training data"),
    )
    LUNG_MIN_ML = 20.0
    LUNG_MEDIAN_HU = (-950.0, -600.0)
    LUNG_MAX_PURE_AIR = 0.15
    BONE_HU = 150.0
    BONE_CLOSING = 5
    BONE_CORTEX_VOXELS = 10
    NODULE_MAX_ELONGATION = 2.5
    NODULE_MIN_LUNG_SHELL = 0.6
    NODULE_MIN_PEAK_HU = -100.0

    @property
    def weights_digest(self) -> str:
        """Its rules are its weights: the digest of every threshold, its domain and version."""
        rules = {k: getattr(self, k) for k in dir(self) if k.isupper()}
        return rules_digest({**rules, "version": self.version, "domain": self.domain.model_dump(mode="json")})

    def run(self, volume: Volume) -> Findings:
        started = time.perf_counter()
        hu = volume.voxels
        labelled, count = components(hu > -500)
        body = np.zeros(hu.shape, dtype=bool)
        if count:
            sizes = ndimage.sum_labels(np.ones_like(labelled), labelled, index=np.arange(1, count + 1))
            body = labelled == int(np.argmax(sizes)) + 1
            body = np.asarray([ndimage.binary_fill_holes(s) for s in body])  # slice-wise: lungs are holes in 2-D
        lungs = self.lungs(hu, body, volume.voxel_volume_ml)
        bone = self.bone(hu, body, volume.spacing) & ~lungs
        labels = np.zeros(hu.shape, dtype=np.uint8)
        labels[body] = 1
        labels[lungs] = 2
        labels[bone] = 3
        nodules = self.nodule_candidates(hu, labels, volume)
        midline = midline_x(volume)  # one body midline for the vessels, the sides and the densitometry
        labels[with_vessels(lungs, volume, midline) & (labels == 1)] = 2
        labels[nodules] = 4
        measurements = measure_all(labels, volume, BASELINE_LABELS, midline=midline)
        density = lung_density(volume, labels == 2, midline)
        return Findings(labels, BASELINE_LABELS, tuple(measurements), {}, {}, self.name, self.version,
                        algorithm_family=self.algorithm_family,
                        extra={"timings": {"total": time.perf_counter() - started}, "lung_density": density.as_dict()})

    def lungs(self, hu: np.ndarray, body: np.ndarray, voxel_ml: float) -> np.ndarray:
        labelled, count = components(body & (hu < -400))
        kept: list[tuple[int, int]] = []
        for number, where in enumerate(ndimage.find_objects(labelled), start=1):
            if where is None:
                continue
            inside = labelled[where] == number
            size = int(inside.sum())
            if size * voxel_ml < self.LUNG_MIN_ML:
                continue
            values = hu[where][inside]
            low, high = self.LUNG_MEDIAN_HU
            if not low <= float(np.median(values)) <= high or float((values < -950).mean()) > self.LUNG_MAX_PURE_AIR:
                continue
            kept.append((size, number))
        chosen = [number for _, number in sorted(kept, reverse=True)[:2]]
        return np.isin(labelled, chosen) if chosen else np.zeros(hu.shape, dtype=bool)

    def bone(self, hu: np.ndarray, body: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
        dense = body & (hu > self.BONE_HU)
        size = self.BONE_CLOSING
        dense = ndimage.binary_closing(dense, structure=np.ones((1, size, size), dtype=bool))
        dense = np.asarray([ndimage.binary_fill_holes(s) for s in dense]) & body
        labelled, count = components(dense)
        if not count:
            return dense
        cortex = ndimage.sum_labels(hu > 300, labelled, index=np.arange(1, count + 1))
        size_ml = ndimage.sum_labels(np.ones_like(labelled), labelled, index=np.arange(1, count + 1)) * float(np.prod(spacing)) / 1000
        keep = np.flatnonzero((cortex >= self.BONE_CORTEX_VOXELS) & (size_ml >= 0.5)) + 1
        return np.isin(labelled, keep)

    def nodule_candidates(self, hu: np.ndarray, labels: np.ndarray, volume: Volume) -> np.ndarray:
        lungs = labels == 2
        enclosed = np.asarray([ndimage.binary_fill_holes(s) for s in lungs]) & ~lungs & (hu > -400) & (labels != 3)
        labelled, count = components(enclosed)
        out = np.zeros(hu.shape, dtype=bool)
        spacing = np.asarray(volume.spacing)
        for number, where in enumerate(ndimage.find_objects(labelled), start=1):
            if where is None:
                continue
            inside = labelled[where] == number
            ml = float(inside.sum()) * volume.voxel_volume_ml
            if not 0.03 <= ml <= 30.0 or float(hu[where][inside].max()) < self.NODULE_MIN_PEAK_HU:
                continue
            extent = np.asarray([s.stop - s.start for s in where]) * spacing
            if extent.max() / max(extent.min(), float(spacing.min())) > self.NODULE_MAX_ELONGATION:
                continue
            grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in where)
            own = labelled[grown] == number
            shell = ndimage.binary_dilation(own) & ~own
            if shell.any() and float(lungs[grown][shell].mean()) < self.NODULE_MIN_LUNG_SHELL:
                continue
            out[where] |= inside
        return out
