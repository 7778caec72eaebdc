"""``find`` and ``retrieve``: query a peer with ``query: true`` and fetch a study from it into the
node (flow/retrieval.py), by C-FIND/C-MOVE/C-GET or QIDO-RS/WADO-RS as the peer speaks."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from ..config import NodeConfig
from ..errors import ConfigError, IndexError_, PeerError
from .common import EXIT_FAILED, EXIT_OK, EXIT_PEER, EXIT_USAGE, fail


def _keys(pairs: list[str]) -> dict[str, str]:
    """KEYWORD=VALUE pairs (DICOM keywords: PatientID=123, StudyDate=20240101-20241231, ...)."""
    from pydicom.datadict import tag_for_keyword

    keys = {}
    for pair in pairs:
        keyword, sep, value = pair.partition("=")
        if not sep or tag_for_keyword(keyword) is None:
            raise ConfigError(f"{pair!r}: give matching keys as DICOM keyword=value, e.g. PatientID=12345")
        keys[keyword] = value
    return keys


def cmd_find(config: NodeConfig, args: argparse.Namespace) -> int:
    from ..flow.retrieval import SERIES_KEYS, STUDY_KEYS, find, query_peer

    level = args.level.upper()
    try:
        keys = _keys(args.keys)
        if level == "SERIES" and "StudyInstanceUID" not in keys:
            return fail(EXIT_USAGE, "--level series needs StudyInstanceUID=...")
        peer = query_peer(config, args.on)
        matches = find(config, peer, level, keys, timeout=args.timeout)
    except ConfigError as exc:
        return fail(EXIT_USAGE, str(exc))
    except PeerError as exc:
        return fail(EXIT_PEER, str(exc))
    columns = STUDY_KEYS if level == "STUDY" else SERIES_KEYS
    rows = [{c: str(ds.get(c, "") if not isinstance(ds.get(c), list) else "\\".join(ds.get(c))) for c in columns}
            for ds in matches]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    table = Table(title=f"{len(rows)} {level.lower()} match(es) on {peer.name}")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(row[c] for c in columns))
    Console(soft_wrap=True).print(table)
    return EXIT_OK


def cmd_retrieve(config: NodeConfig, args: argparse.Namespace) -> int:
    from ..flow.retrieval import query_peer, retrieve, study_for_accession
    from ..storage.audit import AuditLog
    from ..storage.index import Index
    from ..storage.store import InstanceStore

    try:
        peer = query_peer(config, args.source)
        study = args.study if not args.accession else study_for_accession(config, peer, args.study)
    except ConfigError as exc:
        return fail(EXIT_USAGE, str(exc))
    except PeerError as exc:
        return fail(EXIT_PEER, str(exc))
    if args.analyse:
        from ..flow.requests import RequestStore

        index = Index(config.index.location)
        try:
            route, pipeline = (args.analyse, "") if args.analyse in {r.name for r in config.routes} else ("", args.analyse)
            request_id = RequestStore(index).create(study_uid=study, source=peer.name, route=route, pipeline=pipeline,
                                                    destinations=args.destinations, config=config, origin="cli")
        except ConfigError as exc:
            return fail(EXIT_USAGE, str(exc))
        finally:
            index.close()
        print(f"Request {request_id}: study {study} from {peer.name}, {'route' if route else 'pipeline'} {args.analyse}; "
              "the running node "
              "retrieves, analyses and delivers it (dicom-node requests shows its state)")
        return EXIT_OK
    store = InstanceStore(config.storage.path, config.storage.durability, min_free_bytes=config.storage.min_free_mb * 2**20)
    index = Index(config.index.location)
    audit = AuditLog(config.audit.path)
    try:
        report = retrieve(config, peer, study, store, index, audit, timeout=args.timeout)
    except PeerError as exc:
        return fail(EXIT_PEER, str(exc))
    except IndexError_ as exc:
        return fail(EXIT_FAILED, str(exc))
    finally:
        index.close()
        audit.close()
    print(f"Study {study} from {peer.name}: {report.completed} sent by the peer, {report.stored} stored here "
          f"({report.duplicates} already held), {report.failed + len(report.refused)} failed, in {report.seconds:.1f} s")
    for reason in report.refused[:10]:
        print(f"  refused: {reason}")
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_requests(config: NodeConfig, args: argparse.Namespace) -> int:
    from ..flow.requests import RequestStore
    from ..storage.index import Index

    index = Index(config.index.location)
    try:
        rows = RequestStore(index).list(args.limit)
    finally:
        index.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    table = Table(title=f"{len(rows)} request(s)")
    for column in ("id", "origin", "study", "from", "route / pipeline", "state", "detail"):
        table.add_column(column)
    for r in rows:
        table.add_row(str(r["id"]), r["origin"], r["study_uid"] or f"accession {r['accession']}", r["source"],
                      r["route"] or r["pipeline"] or "the rules", r["state"], r["detail"][:120])
    Console(soft_wrap=True).print(table)
    return EXIT_OK
