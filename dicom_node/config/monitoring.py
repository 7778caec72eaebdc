"""``monitoring:``: how the models in use are watched (dicom_node/monitoring/). Drift compares,
per model version and scanner, a reference window (the first ``reference_days`` of its records)
with the recent ``window_days``; a shift beyond a bound raises a ``model.drift`` event (the
notification stream) and shows in the metrics and the dashboard."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from .base import _Section


class MonitoringSection(_Section):
    enabled: bool = True
    reference_days: float = Field(30.0, gt=0)
    window_days: float = Field(7.0, gt=0)
    #: Fewer records than this in either window and nothing is judged (noise, not drift).
    min_records: int = Field(20, ge=1)
    #: Bounds: a drop of the gate's acceptance rate (absolute, 0-1), a rise of the median gate
    #: distance (in the training data's spreads), a drop of the mean structure confidence.
    max_acceptance_drop: float = Field(0.2, gt=0, le=1)
    max_distance_shift: float = Field(1.0, gt=0)
    max_confidence_drop: float = Field(0.05, gt=0, le=1)
    check_interval_seconds: float = Field(3600.0, ge=1)
    #: The same drift is announced again after this long while it lasts.
    renotify_hours: float = Field(24.0, gt=0)
    #: Where corrected cases are kept as training cases (source series and corrected SEG).
    cases_path: Path = Path("./var/corrections")
    #: De-identify corrected cases on disk (the de-identification profile's name), or keep them as received.
    cases_deidentify: str | None = None
