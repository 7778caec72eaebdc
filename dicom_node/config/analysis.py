"""How analysis runs and what it returns: ``pipelines``, ``results``, ``jobs`` and ``delivery``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from .base import _Section


class LabelCodes(_Section):
    """SNOMED CT (or other) codes of a label, as (code value, scheme, meaning). A code value
    written unquoted in YAML (``[123037004, SCT, Anatomical Structure]``) reads as a number; code
    values are strings in DICOM, so a whole number is taken as its digits."""

    category: tuple[str, str, str]
    type: tuple[str, str, str]

    @field_validator("category", "type", mode="before")
    @classmethod
    def _numbers_are_code_values(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [str(item) if isinstance(item, int) and not isinstance(item, bool) else item for item in value]
        return value


class PipelineSpec(_Section):
    """``model``: a model card, by name from the registry (``model: ct-organs``, ai/models) or
    as a folder anywhere (``path: DIR`` holding card.yaml and the weights; the card's ``format``
    says torchscript or onnx); ``monai-bundle``: a MONAI bundle folder (``path:``) run by its
    own configuration; ``nnunet``: a trained nnU-Net v2 model folder (``path:``); ``classical``: the non-learned CT baseline; ``command``: an external
    program or container under mercure's module contract. ``device``: auto (CUDA when
    present), cpu or cuda[:N]."""

    kind: Literal["model", "classical", "command", "monai-bundle", "nnunet"] = "model"
    model: str | None = None
    path: Path | None = None
    device: str = "auto"
    #: The job queue its series go to (job_engine.queue_for): by default ``gpu`` for device
    #: cuda[:N], else ``default``; a site may name its own (a big-memory host, say).
    queue: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    # kind command (dicom_node/pipelines/command.py): the program and its arguments ({in} and
    # {out} become the work folders), how long it may run, what it is called in the results,
    # its domain (dicom_node's gate holds every series against it: at least the modality),
    # SNOMED codes for its label names, and settings handed over in task.json.
    command: list[str] = []
    timeout_seconds: float = Field(600.0, gt=0)
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    version: str = "unknown"
    domain: dict[str, Any] | None = None
    codes: dict[str, LabelCodes] = {}
    settings: dict[str, Any] = {}
    # kind nnunet (ai/adapters/nnunet.py): which folds and checkpoint of the model folder, test-time
    # mirroring (nnU-Net's default), and whether the series goes in as it is or as RAS+.
    folds: list[int | str] = [0]
    checkpoint: str = "checkpoint_final.pth"
    mirroring: bool = True
    orientation: Literal["as-is", "ras"] = "as-is"

    def label_codes(self) -> dict[str, tuple[tuple[str, str, str], tuple[str, str, str]]]:
        """``codes:`` as label name -> (category, type)."""
        return {label: (tuple(c.category), tuple(c.type)) for label, c in self.codes.items()}  # type: ignore[misc]


class ResultsSection(_Section):
    #: Result objects waiting for delivery (and kept after it, for audit and re-sends).
    path: Path = Path("./var/results")
    seg_series_number: int = Field(9001, ge=1)
    sr_series_number: int = Field(9002, ge=1)
    #: keep: one SEG frame per source frame and segment; omit: drop frames with no voxel.
    empty_frames: Literal["keep", "omit"] = "keep"
    #: Also send the model's per-voxel uncertainty as a Parametric Map (dicom_node/results/parametric_map.py):
    #: 4 bytes per source voxel (315 MB for 512 x 512 x 300), so off unless a site wants it.
    uncertainty_map: bool = False
    map_series_number: int = Field(9003, ge=1)
    #: The Key Object Selection of a route with ``key_images: true``.
    kos_series_number: int = Field(9004, ge=1)


class JobsSection(_Section):
    #: Analysis worker processes that ``serve`` starts (0: none; run ``dicom-node worker``).
    workers: int = Field(1, ge=0, le=64)
    #: A running job's lease; a worker renews it every third of it while it works.
    lease_seconds: float = Field(120.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    retry_base_seconds: float = Field(30.0, ge=0)
    poll_seconds: float = Field(1.0, gt=0)
    #: Who hands jobs to workers (job_engine.py): ``lease``, the node's own lease loop on the
    #: index (the embedded default for one machine); ``procrastinate``, the procrastinate job
    #: engine in the PostgreSQL index (several hosts; jobs deferred in the transaction that
    #: routes the series); ``auto``: procrastinate when index.url is set, else lease.
    engine: Literal["auto", "lease", "procrastinate"] = "auto"
    #: The queues this machine's workers take (``serve --queues`` overrides): a job goes to its
    #: pipelines' queue (``gpu`` when one wants cuda, else ``default``, or a pipeline's own
    #: ``queue:``). Unset: ``gpu`` and ``default`` where torch sees a GPU, else ``default``.
    queues: list[str] | None = None
    #: procrastinate: a worker that has not renewed its heartbeat for this long is taken as dead
    #: and its job runs again elsewhere (heartbeats every third of it).
    stalled_seconds: float = Field(30.0, gt=0)


class DeliverySection(_Section):
    #: First retry after this long, doubling each time up to retry_max_seconds.
    retry_base_seconds: float = Field(5.0, gt=0)
    retry_max_seconds: float = Field(600.0, gt=0)
    #: A delivery still failing this long after it was queued is dead-lettered.
    give_up_after_seconds: float = Field(86400.0, gt=0)
    interval_seconds: float = Field(1.0, gt=0)
    timeout_seconds: float = Field(60.0, gt=0)
