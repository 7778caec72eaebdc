"""The analysis worker: claims jobs, turns a series into results, queues their delivery.

One job: the series' files -> ``load_series`` (volume.py) -> the route's pipeline (``ai``) ->
SEG and SR (results/) written to the results folder -> one outbox row per object and
destination, queued in the same transaction that marks the job done. A worker that dies
mid-job never commits that transaction; its lease expires and another claim redoes the job,
with the same result UIDs.

Workers run as their own processes (``dicom-node serve`` starts ``jobs.workers`` of them,
``dicom-node worker`` runs one alone), so a model never competes with the listener for the
GIL. ``burst`` mode drains the queue and returns, which tests and scripts use.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from ai.trust.gate import GateDecision
from ai.trust.gate import check as gate_check
from ai.types import Findings

from .. import counters
from ..config import NodeConfig
from ..errors import CommandOutputError, LeaseLost, NodeError, NotApplicable, PermanentJobError, PipelineError, VolumeError
from ..logs import log_context, setup_logging
from ..pipelines.build import Pipeline
from ..pipelines.command import CommandPipeline
from ..privacy.outgoing import deid_variant
from ..results import (
    EmptyFrames,
    ResultSettings,
    SegmentationEncoding,
    build_declined_report,
    segmentation_variants,
)
from ..results.identity import Algorithm
from ..storage.audit import AuditLog
from ..storage.events import emit
from ..storage.index import Index
from ..storage.inferences import Inference, Scanner
from ..storage.inferences import record as record_inference
from ..storage.store import make_durable_dirs, write_dataset_atomically
from ..storage.volume import gate_facts, load_series
from . import inference_records
from .job_engine import job_queue, run_procrastinate_worker, worker_queues
from .jobs import Job, JobQueue
from .model_serving import ServedModels, algorithm_of
from .outbox import Candidate, Outbox
from .result_files import write_result_files

log = logging.getLogger(__name__)


@dataclass
class JobOutcome:
    findings: Findings | None  # None: a command module's own DICOM results (files) only
    pipeline: str  # the name (in the configuration) of the pipeline that ran
    files: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    #: For the inference records (inference_records.py): who ran, the gate's word on it and on
    #: every pipeline that declined first, and the scanner.
    algorithm: Algorithm | None = None
    decision: GateDecision | None = None
    declined: list[tuple[str, Algorithm, GateDecision]] = field(default_factory=list)
    scanner: Scanner = Scanner()
    shadows: list[Inference] = field(default_factory=list)  # shadow versions' runs (model_serving.py)


@dataclass
class _Attempt:
    """What is known of a job while it runs, for the record of a failure."""

    pipeline: str = ""
    algorithm: Algorithm | None = None
    scanner: Scanner = Scanner()


def file_candidate(variant: str, path: Path, meta: Dataset | None = None) -> Candidate:
    """The outbox candidate for a result file, from its File Meta (read here unless given)."""
    if meta is None:
        from pydicom.filereader import read_file_meta_info

        meta = read_file_meta_info(path)
    return Candidate(variant, str(path), str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID),
                     str(meta.MediaStorageSOPInstanceUID))


def results_folder(root: Path, key: str) -> Path:
    return root / hashlib.sha256(key.encode()).hexdigest()[:24]


def job_summary(job: Job, pipeline: str, findings: Findings | None, sr_rows: list[Any]) -> dict[str, Any]:
    """The ``job.done`` payload: what the job found, in numbers a notification can carry (no pixels)."""
    summary: dict[str, Any] = {"job": job.id, "route": job.route, "pipeline": pipeline, "job_key": job.key,
                               "destinations": list(job.destinations)}
    srs = [c for _, _, candidates in sr_rows for c in candidates[:1]]
    if srs:
        summary["sr_sop_instance_uid"] = srs[0].sop_instance_uid
    if findings is not None:
        summary.update({
            "model": findings.model_name, "model_version": findings.model_version,
            "structures": [{"value": info.value, "name": info.name} for info in findings.labels],
            "measurements": [{"name": m.name, "label": m.label, "lesion": m.lesion_index, "side": m.side,
                              "volume_ml": round(m.volume_ml, 2), "mean_hu": round(m.mean, 1),
                              "longest_axial_diameter_mm": None if m.longest_axial_diameter_mm is None
                              else round(m.longest_axial_diameter_mm, 1)}
                             for m in findings.measurements],
            "findings": dict(findings.findings), "scores": {k: round(float(v), 4) for k, v in findings.scores.items()},
            "confidence": findings.extra.get("confidence", {}), "withheld": findings.extra.get("withheld", [])})
        if findings.extra.get("lung_density"):
            summary["lung_density"] = findings.extra["lung_density"]
    return summary


class Worker:
    """Claims and runs jobs until stopped (or, in burst mode, until the queue is empty)."""

    def __init__(self, config: NodeConfig, index: Index | None = None, owner: str | None = None,
                 clock: Callable[[], float] = time.time, audit: AuditLog | None = None,
                 queues: list[str] | None = None) -> None:
        self.config = config
        #: The job queues this worker takes (job_engine.worker_queues: GPU pipelines need a GPU).
        self.queues = worker_queues(config, queues)
        self._audit = audit  # opened on first use: most jobs write nothing there
        # synchronous=FULL: a job's end and its deliveries (one commit per job) survive a power cut.
        self.index = index or Index(config.index.location)
        self.jobs = job_queue(self.index, config)
        self.outbox = Outbox(self.index)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self.clock = clock
        self.served = ServedModels(config, self.index)
        self.settings = ResultSettings(seg_series_number=config.results.seg_series_number,
                                       sr_series_number=config.results.sr_series_number,
                                       map_series_number=config.results.map_series_number,
                                       kos_series_number=config.results.kos_series_number,
                                       device_name=config.node.ae_title,
                                       empty_frames=EmptyFrames(config.results.empty_frames))

    def pipeline(self, name: str) -> Pipeline:
        """The pipeline ``name`` as it serves now: a model's promoted version, else its card."""
        spec = self.config.pipelines.get(name)
        if spec is None:
            raise PermanentJobError(f"no pipeline named {name!r} in the configuration")
        try:
            pipeline = self.served.pipeline(name, spec)
        except PipelineError as exc:
            raise PermanentJobError(f"pipeline {name!r}: {exc}") from exc
        assert pipeline is not None
        return pipeline

    # -- one job -------------------------------------------------------------------------

    def priors(self, job: Job, header: Dataset) -> list[Any]:
        """The route's priors, held by the node (flow/priors.py); [] when the route asks for none."""
        route = next((r for r in self.config.routes if r.name == job.route), None)
        if route is None or route.priors is None:
            return []
        from ..storage.store import InstanceStore
        from .priors import fetch_priors

        store = InstanceStore(self.config.storage.path, self.config.storage.durability,
                              min_free_bytes=self.config.storage.min_free_mb * 2**20)
        if self._audit is None:
            self._audit = AuditLog.from_config(self.config)
        found = fetch_priors(self.config, self.index, store, route.priors, header, job.calling_ae, self._audit)
        log.info("Job %d: %d prior(s) for the pipeline: %s", job.id, len(found),
                 ", ".join(f"{p.study_uid} ({p.study_date}, {len(p.files)} files)" for p in found) or "none found")
        return found

    def analyse(self, job: Job, attempt: _Attempt | None = None) -> JobOutcome:
        """Run the job's pipeline on its series and write the result files (no index writes)."""
        attempt = attempt if attempt is not None else _Attempt()
        timings: dict[str, float] = {}
        started = time.perf_counter()
        files = self.index.series_files(job.series_uid)
        if not files:
            raise PermanentJobError(f"series {job.series_uid} has no stored instances")
        try:
            source = load_series(files)
        except VolumeError as exc:
            raise PermanentJobError(f"series {job.series_uid}: {exc}") from exc
        timings["load"] = time.perf_counter() - started
        attempt.scanner = Scanner.of(source.datasets[0])
        started = time.perf_counter()
        chosen, pipeline, decision, declined = self.choose_pipeline(job, source)
        attempt.pipeline, attempt.algorithm = chosen, algorithm_of(pipeline)
        timings["gate"] = time.perf_counter() - started
        started = time.perf_counter()
        began = datetime.now().astimezone()  # the results' Content Date/Time (IHE AI Results)
        folder = results_folder(self.config.results.path, job.key)
        module_files: list[Path] = []
        findings: Findings | None
        if isinstance(pipeline, CommandPipeline):
            priors = self.priors(job, source.datasets[0])
            if priors:
                timings["priors"] = time.perf_counter() - started
                started = time.perf_counter()
            try:
                output = pipeline.run_series(source, files, job.key, keep=folder,
                                             priors=[(p.study_uid, p.study_date, list(p.files)) for p in priors])
            except CommandOutputError as exc:
                raise PermanentJobError(str(exc)) from exc
            findings, module_files = output.findings, output.dicom
        else:
            findings = pipeline.run(source.volume)
        if findings is not None:
            findings.extra["gate"] = {"notes": list(decision.notes), "measures": decision.measures}
            findings.extra["analysis_started"] = began
            if not findings.weights_digest:
                findings = replace(findings, weights_digest=algorithm_of(pipeline).weights_digest)
        timings["pipeline"] = time.perf_counter() - started

        started = time.perf_counter()
        make_durable_dirs(folder)
        outcome = JobOutcome(findings, chosen, timings=timings, algorithm=replace(attempt.algorithm, weights_digest=(
            findings.weights_digest if findings is not None else attempt.algorithm.weights_digest)), decision=decision,
            declined=declined, scanner=attempt.scanner)
        try:
            outcome.shadows = self.served.shadows(job, source, (chosen, findings), attempt.scanner)
        except Exception as exc:  # noqa: BLE001 - a shadow version must never change what the job does
            log.warning("Job %d: the shadow run failed: %s", job.id, exc)
        for path in module_files:  # a module's own DICOM results, as it wrote them (module-N.dcm)
            outcome.files[path.stem] = path
        if findings is None:
            timings["encode"] = time.perf_counter() - started
            return outcome
        wanted = [SegmentationEncoding(e) for name in job.destinations for e in self._peer_encodings(name)]
        route = next((r for r in self.config.routes if r.name == job.route), None)
        outcome.files.update(write_result_files(source, findings, job.key, self.settings, folder, wanted,
                                                key_images=route is not None and route.key_images,
                                                uncertainty_map=self.config.results.uncertainty_map))
        timings["encode"] = time.perf_counter() - started
        return outcome

    def choose_pipeline(self, job: Job, source: Any) -> tuple[str, Pipeline, GateDecision, list[tuple[str, Algorithm, GateDecision]]]:
        """The first of the job's pipelines whose domain the series is in, with its name and
        those that declined before it (NotApplicable when none is: every pipeline's reasons)."""
        facts = gate_facts(source)
        declined: list[tuple[str, str, GateDecision]] = []
        for name in job.pipeline.split(","):
            pipeline = self.pipeline(name)
            decision = gate_check(pipeline.domain, facts, source.volume)
            if decision.applicable:
                if declined:
                    log.info("Job %d: %s declined the series (%s); %s takes it", job.id, declined[-1][0],
                             declined[-1][2].summary(), name)
                return name, pipeline, decision, [(n, algorithm_of(self.pipeline(n)), d) for n, _, d in declined]
            declined.append((name, f"{pipeline.name} {pipeline.version}", decision))
        raise NotApplicable(declined, source)

    def _peer_encodings(self, name: str) -> list[str]:
        try:
            return list(self.config.peer(name).seg_encodings)
        except NodeError:
            return []

    def deliveries(self, job: Job, outcome: JobOutcome) -> list[tuple[str, str, list[Candidate]]]:
        """(object, peer, candidates) rows for every destination of the job."""
        from pydicom.filereader import read_file_meta_info

        metas = {key: read_file_meta_info(path) for key, path in outcome.files.items()}  # once per file, not per peer

        rows = []
        for name in job.destinations:
            def candidate(variant: str, key: str, name: str = name) -> Candidate:
                return file_candidate(self._variant(job, name, variant), outcome.files[key], metas[key])

            for key in sorted(k for k in outcome.files if k.startswith("module-")):
                rows.append((str(metas[key].MediaStorageSOPInstanceUID), name, [candidate("original", key)]))
            if "sr-binary" not in outcome.files:  # a module's own results only
                continue
            variants = [e.value for e in segmentation_variants([SegmentationEncoding(e) for e in self._peer_encodings(name)])]
            if "seg-binary" in outcome.files:
                rows.append(("seg", name, [candidate(v, f"seg-{v}") for v in variants]))
            sr_candidates = [candidate(v, "sr-labelmap" if v == "labelmap" else "sr-binary") for v in variants]
            if "seg-binary" not in outcome.files:  # nothing found: the SR alone says so
                sr_candidates = [candidate("binary", "sr-binary")]
            rows.append(("sr", name, sr_candidates))
            if "uncertainty" in outcome.files:
                rows.append(("uncertainty", name, [candidate("binary", "uncertainty")]))
            if "kos" in outcome.files:
                rows.append(("kos", name, [candidate("binary", "kos")]))
        return rows

    def run_job(self, job: Job) -> bool:
        """Run one claimed job to done, queued-for-retry or dead. True when done."""
        with log_context(job=job.id, job_key=job.key, route=job.route, study_uid=job.study_uid, series_uid=job.series_uid):
            return self._run_job(job)

    def _run_job(self, job: Job) -> bool:
        lease = self.config.jobs.lease_seconds
        lost = threading.Event()
        stop_beat = threading.Event()

        def beat() -> None:
            while not stop_beat.wait(lease / 3):
                try:
                    self.jobs.heartbeat(job.id, self.owner, self.clock(), lease, attempt=job.attempts)
                except LeaseLost:
                    lost.set()
                    return
                except NodeError as exc:
                    log.warning("Heartbeat for job %d failed: %s", job.id, exc)

        heart = threading.Thread(target=beat, name=f"job-{job.id}-heartbeat", daemon=True)
        heart.start()
        log.info("Job %d (%s): %s on series %s v%d, attempt %d of %d", job.id, job.route, job.pipeline, job.series_uid,
                 job.series_version, job.attempts, job.max_attempts)
        attempt = _Attempt()
        try:
            outcome = self.analyse(job, attempt)
            rows = self.deliveries(job, outcome)
            if lost.is_set():
                raise LeaseLost(f"job {job.id}: lease lost while working")
            now = self.clock()
            with self.index.transaction() as db:
                for obj, peer, candidates in rows:
                    Outbox.add(db, job.id, job.key, obj, peer, candidates, now)
                JobQueue.mark_done(db, job.id, self.owner, now, outcome.pipeline, attempt=job.attempts)
                for inference in inference_records.declined(job, outcome.declined, outcome.scanner):
                    record_inference(db, inference, now)
                if outcome.algorithm is not None and outcome.decision is not None:
                    record_inference(db, inference_records.analysed(job, outcome.pipeline, outcome.algorithm, outcome.decision,
                                                                    outcome.findings, outcome.scanner, outcome.timings), now)
                for inference in outcome.shadows:
                    record_inference(db, inference, now)
                emit(db, "job.done", study_uid=job.study_uid, series_uid=job.series_uid, job_id=job.id, now=now,
                     payload=job_summary(job, outcome.pipeline, outcome.findings, [r for r in rows if r[0] == "sr"]))
        except LeaseLost as exc:
            log.warning("%s; another worker will finish it", exc)
            return False
        except NotApplicable as exc:
            return self._not_applicable(job, exc)
        except Exception as exc:  # noqa: BLE001 - any failure of a job is recorded on the job, never fatal
            permanent = isinstance(exc, PermanentJobError)
            message = f"{type(exc).__name__}: {exc}"
            try:
                state = self.jobs.fail(job.id, self.owner, message, self.clock(), permanent=permanent,
                                       attempt=job.attempts)
            except (LeaseLost, NodeError) as inner:
                log.error("Job %d failed (%s) and could not be recorded: %s", job.id, message, inner)
                return False
            log.error("Job %d failed (%s): %s", job.id, state.value, message, exc_info=not permanent)
            counters.JOBS_FINISHED.labels(job.pipeline, state.value).inc()
            self._record_failure(job, attempt, message, state.value == "dead")
            return False
        finally:
            stop_beat.set()
            heart.join()
        ran = outcome.pipeline or job.pipeline
        for stage, seconds in outcome.timings.items():
            counters.JOB_STAGE_SECONDS.labels(ran, stage).observe(seconds)
        counters.JOBS_FINISHED.labels(ran, "done").inc()
        timings = ", ".join(f"{k} {v:.2f} s" for k, v in outcome.timings.items())
        log.info("Job %d done: %d measurements, %d result files; results to %s (%s)", job.id,
                 len(outcome.findings.measurements) if outcome.findings else 0, len(outcome.files),
                 ", ".join(job.destinations) or "nobody", timings)
        return True

    def _record_failure(self, job: Job, attempt: _Attempt, message: str, final: bool) -> None:
        """The inference record of a failed attempt, in a transaction of its own (the job's
        failure is already recorded; losing this record must not undo that)."""
        try:
            with self.index.transaction() as db:
                record_inference(db, inference_records.failed(job, attempt.pipeline, attempt.algorithm, attempt.scanner,
                                                              message, final), self.clock())
        except (NodeError, OSError) as exc:
            log.warning("Job %d: the inference record of its failure could not be written: %s", job.id, exc)

    def _not_applicable(self, job: Job, exc: NotApplicable) -> bool:
        """End the job ``not applicable`` (not failed, not retried), with the reasons in the
        job row, the log and the audit trail."""
        reasons = exc.reasons()
        scanner = Scanner.of(exc.source.datasets[0] if exc.source is not None else None)
        try:
            shadows = self.served.shadows(job, exc.source, None, scanner) if exc.source is not None else []
        except Exception as shadow_error:  # noqa: BLE001 - a shadow version must never change what the job does
            log.warning("Job %d: the shadow run failed: %s", job.id, shadow_error)
            shadows = []
        try:
            rows = self._declined_report(job, exc)
            now = self.clock()
            with self.index.transaction() as db:
                for obj, peer, candidates in rows:
                    Outbox.add(db, job.id, job.key, obj, peer, candidates, now)
                JobQueue.mark_not_applicable(db, job.id, self.owner, reasons, now, attempt=job.attempts)
                for inference in [*inference_records.declined(
                        job, [(name, algorithm_of(self.pipeline(name)), d) for name, _, d in exc.declined], scanner), *shadows]:
                    record_inference(db, inference, now)
                emit(db, "job.not_applicable", study_uid=job.study_uid, series_uid=job.series_uid, job_id=job.id, now=now,
                     payload={"job": job.id, "route": job.route, "reasons": reasons})
        except (LeaseLost, NodeError, OSError) as inner:
            log.error("Job %d is not applicable (%s) and could not be recorded: %s", job.id, reasons, inner)
            return False
        if self._audit is None:
            self._audit = AuditLog.from_config(self.config)
        self._audit.write("job_not_applicable", job=job.id, route=job.route, series_uid=job.series_uid,
                         series_version=job.series_version,
                         pipelines=[{"pipeline": name, "model": model, "reasons": list(decision.reasons),
                                     "measures": decision.measures} for name, model, decision in exc.declined])
        log.warning("Job %d not applicable: %s", job.id, reasons)
        counters.JOBS_FINISHED.labels(job.pipeline, "not_applicable").inc()
        return True

    def _declined_report(self, job: Job, exc: NotApplicable) -> list[tuple[str, str, list[Candidate]]]:
        """The "not analysed, because ..." SR for each destination (route ``on_not_applicable:
        report``, the default): a radiologist sees that the AI looked and declined."""
        route = next((r for r in self.config.routes if r.name == job.route), None)
        if route is None or route.on_not_applicable != "report" or not job.destinations or exc.source is None:
            return []
        sr = build_declined_report(exc.source, [(algorithm_of(self.pipeline(name)), decision.summary())
                                                for name, _, decision in exc.declined],
                                   job.key, self.settings, datetime.now().astimezone())
        folder = results_folder(self.config.results.path, job.key)
        make_durable_dirs(folder)
        path = folder / "sr-declined.dcm"
        write_dataset_atomically(sr, path)
        return [("sr", name, [file_candidate(self._variant(job, name, "binary"), path)]) for name in job.destinations]

    def _variant(self, job: Job, peer: str, variant: str) -> str:
        """``variant``, de-identified for a destination the route names with a profile
        (``{peer: ..., deidentify: ...}``): the sender applies it when it sends (privacy/outgoing.py)."""
        route = next((r for r in self.config.routes if r.name == job.route), None)
        profile = route.profile_for(peer, "destination") if route is not None else None
        return deid_variant(profile, variant) if profile else variant

    # -- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event | Any, burst: bool = False) -> int:
        """Claim and run jobs until ``stop`` is set (or, with ``burst``, the queue is empty).
        Returns the number of jobs finished."""
        if self.config.job_engine == "procrastinate":
            return run_procrastinate_worker(self, stop, self.queues, burst)
        done = 0
        while not stop.is_set():
            try:
                job = self.jobs.claim(self.owner, self.clock(), self.config.jobs.lease_seconds, self.queues)
            except NodeError as exc:
                log.error("Cannot claim a job, will try again: %s", exc)
                job = None
            if job is None:
                if burst:
                    return done
                stop.wait(self.config.jobs.poll_seconds)
                continue
            done += self.run_job(job)
        return done

    def close(self) -> None:
        self.index.close()
        if self._audit is not None:
            self._audit.close()


def worker_main(config: NodeConfig, stop: Any) -> None:
    """Entry point of a worker process started by ``serve`` (multiprocessing, spawn)."""
    import signal

    from ..process import die_with_parent, name_process

    die_with_parent()
    name_process("dn-worker")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    setup_logging(False, with_pid=True, json_lines=config.logs.format == "json")
    worker = Worker(config)
    try:
        worker.run(stop)
    finally:
        worker.close()
