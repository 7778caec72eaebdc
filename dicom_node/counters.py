"""The counts the listener, the workers and the sender keep as they go (Prometheus counters and
histograms), defined once here so that every stage can count without importing the web service.

The node runs as several processes, so prometheus_client runs in multiprocess mode: each process
writes its counts to files in one folder (``PROMETHEUS_MULTIPROC_DIR``, set by ``serve`` before any
of them starts: metrics_folder.use_folder) and the web service adds them up when scraped
(web/metrics.py). A node run in one process (tests, the demo) keeps them in memory.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

INSTANCES_RECEIVED = Counter("dicom_node_instances_received", "Instances stored and acknowledged, per calling AE title",
                             ["calling_ae"])
BYTES_RECEIVED = Counter("dicom_node_bytes_received", "Bytes of instances stored and acknowledged, per calling AE title",
                         ["calling_ae"])
INSTANCES_REFUSED = Counter("dicom_node_instances_refused", "C-STORE requests answered with a failure status",
                            ["calling_ae", "status"])
ASSOCIATIONS = Counter("dicom_node_associations", "Associations by how they ended (released, aborted, rejected)",
                       ["outcome"])
CSTORE_SECONDS = Histogram("dicom_node_cstore_seconds",
                           "From a C-STORE request's dataset received to its response: the durable store and index",
                           buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
JOB_STAGE_SECONDS = Histogram("dicom_node_job_stage_seconds", "Analysis job time per pipeline stage",
                              ["pipeline", "stage"],
                              buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000))
JOBS_FINISHED = Counter("dicom_node_jobs_finished", "Analysis jobs by outcome", ["pipeline", "outcome"])
DELIVERIES = Counter("dicom_node_deliveries", "Objects delivered (results and forwards), per peer", ["peer"])
DELIVERY_FAILURES = Counter("dicom_node_delivery_failures", "Failed delivery attempts, per peer", ["peer"])

# Monitoring (dicom_node/monitoring/drift.py), set by the one process that checks drift: in
# multiprocess mode the most recent value written wins ("mostrecent"), whichever process wrote it.
MODEL_DRIFT = Gauge("dicom_node_model_drift", "How far a model's measure moved from its reference window (positive: worse)",
                    ["model", "version", "scanner", "measure"], multiprocess_mode="mostrecent")
MODEL_ACCEPTANCE = Gauge("dicom_node_model_acceptance_rate", "Share of series the model's gate accepted in the recent window",
                         ["model", "version", "scanner"], multiprocess_mode="mostrecent")
