"""The command line: the parser with one sub-command per group, and ``main``, which loads the
configuration, runs the command and turns the node's errors into exit codes."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import DEFAULT_CONFIG_PATH, load_config, resolve_config_path
from ..errors import ConfigError, NodeError
from ..storage.file_modes import restrict_new_files
from .audit import cmd_audit
from .common import CONFIG_HELP, EXIT_FAILED, EXIT_USAGE, MISSING_HINT, err, fail
from .learning import cmd_model_versions, cmd_train
from .models import cmd_models
from .peers import cmd_echo, cmd_send
from .privacy import cmd_deidentify
from .query import cmd_find, cmd_requests, cmd_retrieve
from .routes import cmd_routes
from .serve import cmd_serve, cmd_worker
from .start import cmd_demo, cmd_init
from .state import cmd_jobs, cmd_migrate, cmd_status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicom-node", description="A DICOM node that receives studies and runs AI pipelines on them.")
    parser.add_argument("--config", type=Path, default=None, help=CONFIG_HELP)
    # Accepted after the command too (`dicom-node serve --config node.yaml`); there it wins.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=CONFIG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_parser = sub.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return _add_parser(name, parents=[common], **kwargs)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    init = sub.add_parser("init", help="write the commented default configuration to PATH (default config/node.yaml)")
    init.add_argument("path", nargs="?", type=Path, default=DEFAULT_CONFIG_PATH)
    init.add_argument("--force", action="store_true", help="replace PATH if it exists")
    init.set_defaults(func=cmd_init, needs_config=False)

    serve = sub.add_parser("serve", help="run the listener until Ctrl-C / SIGTERM")
    serve.add_argument("-v", "--verbose", action="store_true", help="debug logging, pynetdicom's included")
    serve.add_argument("--role", choices=["all", "listener", "worker", "sender"], default="all",
                       help="all (default): everything on this machine; listener: DICOM listener, completion, routing, "
                            "web service, retention; worker: the analysis workers; sender: the outbox sender (one "
                            "per index sends, others stand by)")
    serve.add_argument("--queues", nargs="+", metavar="QUEUE",
                       help="the job queues this machine's workers take (default jobs.queues, else gpu and default "
                            "where torch sees a GPU, default alone where it does not)")
    serve.set_defaults(func=cmd_serve)

    echo = sub.add_parser("echo", help="C-ECHO a configured peer")
    echo.add_argument("peer", help="peer name from the configuration")
    echo.add_argument("--timeout", type=float, default=10.0)
    echo.set_defaults(func=cmd_echo)

    send = sub.add_parser("send", help="C-STORE files or folders to a configured peer")
    send.add_argument("paths", nargs="+", type=Path)
    send.add_argument("--to", required=True, help="peer name from the configuration")
    send.add_argument("--timeout", type=float, default=30.0)
    send.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    send.set_defaults(func=cmd_send)

    find = sub.add_parser("find", help="query a peer with query: true (C-FIND, or QIDO-RS for a DICOMweb peer)")
    find.add_argument("keys", nargs="*", metavar="KEYWORD=VALUE",
                      help="matching keys as DICOM keywords: PatientID=123 StudyDate=20240101-20241231 ModalitiesInStudy=CT")
    find.add_argument("--on", required=True, metavar="PEER", help="peer name from the configuration")
    find.add_argument("--level", choices=["study", "series"], default="study")
    find.add_argument("--json", action="store_true")
    find.add_argument("--timeout", type=float, default=30.0)
    find.set_defaults(func=cmd_find)

    retrieve = sub.add_parser("retrieve", help="fetch a study from a peer into the node (C-MOVE, C-GET or WADO-RS), "
                                               "where it is stored, indexed and routed as a received one")
    retrieve.add_argument("study", metavar="STUDY_UID", help="the Study Instance UID (or, with --accession, the "
                                                             "accession number)")
    retrieve.add_argument("--from", dest="source", required=True, metavar="PEER", help="peer name (query: true)")
    retrieve.add_argument("--accession", action="store_true", help="STUDY_UID is an accession number")
    retrieve.add_argument("--analyse", "--analyze", metavar="ROUTE",
                          help="hand it to the running node as a request: retrieve, run ROUTE (a route, or a pipeline "
                               "by name) and deliver")
    retrieve.add_argument("--to", dest="destinations", nargs="+", metavar="PEER",
                          help="with --analyse: where the results go (default: the route's destinations)")
    retrieve.add_argument("--timeout", type=float, default=600.0)
    retrieve.set_defaults(func=cmd_retrieve)

    requests = sub.add_parser("requests", help="requests to retrieve and analyse a study, with their states")
    requests.add_argument("--json", action="store_true")
    requests.add_argument("--limit", type=int, default=50)
    requests.set_defaults(func=cmd_requests)

    status = sub.add_parser("status", help="studies and series in the index, with their states")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)
    jobs = sub.add_parser("jobs", help="analysis jobs and result deliveries, with states, attempts and errors")
    jobs.add_argument("--json", action="store_true", help="machine-readable output")
    jobs.add_argument("--limit", type=int, default=50, help="newest N jobs (default 50)")
    jobs.add_argument("--retry", type=int, metavar="JOB_ID", help="queue a dead-lettered job again")
    jobs.add_argument("--retry-delivery", type=int, metavar="DELIVERY_ID", help="queue a dead-lettered delivery again")
    jobs.set_defaults(func=cmd_jobs)

    migrate = sub.add_parser("migrate", help="upgrade the index's schema to this release's revision (every process "
                                             "also does it when it opens an older index)")
    migrate.add_argument("--status", action="store_true", help="say which revision the index is at; exit 1 unless current")
    migrate.add_argument("--to", metavar="REVISION", help="upgrade or downgrade to REVISION (a release's rollback)")
    migrate.set_defaults(func=cmd_migrate)

    worker = sub.add_parser("worker", help="run one analysis worker (serve starts jobs.workers of them itself)")
    worker.add_argument("--burst", action="store_true", help="run the queued jobs, then exit")
    worker.add_argument("--queues", nargs="+", metavar="QUEUE", help="the job queues to take (as serve --queues)")
    worker.add_argument("-v", "--verbose", action="store_true")
    worker.set_defaults(func=cmd_worker)

    demo = sub.add_parser("demo", help="phantom CT -> node -> SEG + SR, with a measurement table and a PNG preview")
    demo.add_argument("--out", "--workdir", dest="workdir", type=Path, default=Path("var/demo"),
                      help="where the demo keeps everything (default var/demo under the current folder); it "
                           "builds its own configuration, so it runs from any folder")
    demo.add_argument("--pipeline", choices=("ct-organs", "ct-baseline"), default="ct-organs")
    demo.add_argument("--orthanc", action="store_true", help="let Orthanc (if installed) play the PACS")
    demo.add_argument("--viewer", action="store_true",
                      help="then show the result in OHIF (Orthanc + DICOMweb + the OHIF viewer, on loopback) until Ctrl-C")
    demo.add_argument("--serve-seconds", type=float, default=None, help=argparse.SUPPRESS)  # tests: stop the viewer by itself
    demo.add_argument("--seed", type=int, default=7, help="phantom seed")
    demo.add_argument("--timeout", type=float, default=300.0)
    demo.set_defaults(func=cmd_demo, needs_config=False)

    audit = sub.add_parser("audit", help="`audit verify [PATH]`: check the audit trail's hash chain (exit 1 if a line "
                                         "was changed, removed or inserted)")
    audit.add_argument("action", choices=["verify"])
    audit.add_argument("path", nargs="?", type=Path, help="the audit file (default: audit.path of the configuration)")
    audit.set_defaults(func=cmd_audit, needs_config=False)

    routes = sub.add_parser("routes", help="the routing rules, one line each; `routes test PATH|STUDY_UID`: which rules "
                                           "act on a study and, for the others, the condition that failed")
    routes.add_argument("action", nargs="?", choices=["list", "test"], default="list")
    routes.add_argument("targets", nargs="*", help="files or folders of DICOM, or a Study Instance UID in the index")
    routes.add_argument("--calling-ae", default="", help="the calling AE title to assume for files (default: none)")
    routes.add_argument("--called-ae", default="", help="the called AE title to assume for files (default: node.ae_title)")
    routes.add_argument("--json", action="store_true")
    routes.set_defaults(func=cmd_routes)

    deid = sub.add_parser("deidentify", help="de-identify every DICOM file under IN into OUT by a profile of "
                                             "deidentification.profiles (PS3.15 Annex E), for exporting data")
    deid.add_argument("source", type=Path, metavar="IN")
    deid.add_argument("target", type=Path, metavar="OUT")
    deid.add_argument("--profile", required=True, help="a profile named under deidentification.profiles")
    deid.set_defaults(func=cmd_deidentify)

    models = sub.add_parser("models", help="the configured pipelines and the installed models, from their model cards")
    models.add_argument("--models-dir", type=Path, action="append", help="another folder of model folders")
    models.add_argument("--json", action="store_true")
    models.add_argument("--check", action="store_true",
                        help="load every configured pipeline and run it on a small phantom CT (exit 1 if one fails)")
    models.set_defaults(func=cmd_models, needs_config=False)
    versions = models.add_subparsers(dest="action", metavar="{versions,promote,rollback}")
    listing = versions.add_parser("versions", parents=[common], help="fine-tuned versions: active, shadow (with its record), retired")
    listing.add_argument("name", nargs="?")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_model_versions, needs_config=True)
    for action, text in (("promote", "make the version in shadow serve (the comparison is printed)"),
                         ("rollback", "retire the active version; the one it replaced serves again")):
        command = versions.add_parser(action, parents=[common], help=text)
        command.add_argument("name")
        command.set_defaults(func=cmd_model_versions, needs_config=True)

    train = sub.add_parser("train", help="fine-tune a model on the radiologists' corrections (its new version runs in shadow)")
    train.add_argument("--from-corrections", action="store_true", required=True)
    train.add_argument("--base", required=True, help="the model to start from (its active version)")
    train.add_argument("--steps", type=int, default=300)
    train.add_argument("--phantoms", type=int, default=8, help="phantoms of its original training data, rehearsed")
    train.add_argument("--phantom-shape", type=int, nargs=3, default=[150, 176, 176], metavar=("K", "J", "I"))
    train.add_argument("--evaluate-phantoms", type=int, default=2)
    train.add_argument("--threads", type=int, default=2)
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when present")
    train.add_argument("--out", type=Path, help="where the new model folder goes (default: beside monitoring.cases_path)")
    train.add_argument("--models-dir", type=Path, action="append", help="another folder of model folders")
    train.set_defaults(func=cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    restrict_new_files()  # before anything is written: the index, audit trail and results are owner-only
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, missing_hint=MISSING_HINT) if getattr(args, "needs_config", True) else None
        if config is not None and args.command == "serve":
            import os

            err.print(f"configuration: {resolve_config_path(args.config, os.environ).resolve()}", highlight=False)
        return int(args.func(config, args))
    except ConfigError as exc:
        return fail(EXIT_USAGE, f"configuration: {exc}")
    except NodeError as exc:
        return fail(EXIT_FAILED, str(exc))
    except KeyboardInterrupt:
        return fail(EXIT_FAILED, "interrupted")
