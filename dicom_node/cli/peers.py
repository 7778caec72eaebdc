"""``echo`` and ``send``: talking to a configured peer from the command line."""

from __future__ import annotations

import argparse
import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..config import NodeConfig
from ..errors import PeerError
from .common import EXIT_FAILED, EXIT_OK, EXIT_PEER, EXIT_USAGE, client_tls, err, fail


def cmd_echo(config: NodeConfig, args: argparse.Namespace) -> int:
    from ..net.scu import echo

    peer = config.peer(args.peer)
    started = time.perf_counter()
    if not peer.has_dimse:  # a DICOMweb peer: one signed-in QIDO-RS shows it answers
        from ..dicomweb.client import DicomwebPeerClient

        try:
            DicomwebPeerClient(peer).check()
        except PeerError as exc:
            return fail(EXIT_PEER, str(exc))
        print(f"QIDO-RS {peer.name} ({peer.address}): answered in {1000 * (time.perf_counter() - started):.0f} ms")
        return EXIT_OK
    try:
        status = echo(config.node.ae_title, peer, timeout=args.timeout, tls=client_tls(config))
    except PeerError as exc:
        return fail(EXIT_PEER, str(exc))
    if status != 0:
        return fail(EXIT_FAILED, f"{peer.name} answered C-ECHO with status 0x{status:04X}")
    print(f"C-ECHO {peer.name} ({peer.address}): success in {1000 * (time.perf_counter() - started):.0f} ms")
    return EXIT_OK


def cmd_send(config: NodeConfig, args: argparse.Namespace) -> int:
    from ..net.scu import SendResult, iter_dicom_candidates, send_files

    peer = config.peer(args.to)
    if not peer.receive:
        return fail(EXIT_USAGE, f"peers: {peer.name} has receive: false; the node sends nothing to it")
    missing = [p for p in args.paths if not p.exists()]
    if missing:
        return fail(EXIT_USAGE, f"no such file or folder: {missing[0]}")
    files = list(iter_dicom_candidates(args.paths))
    if not files:
        return fail(EXIT_USAGE, "no files to send")
    started = time.perf_counter()
    with Progress(
        TextColumn("[bold]sending to " + peer.name), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err, transient=False, disable=args.quiet,
    ) as progress:
        task = progress.add_task("send", total=len(files))

        def on_result(result: SendResult) -> None:
            progress.advance(task)
            if not result.ok:
                status = "not sent" if result.status is None else f"0x{result.status:04X}"
                progress.console.print(f"[red]failed[/] {result.path}: {status} {result.reason}", highlight=False)

        report = send_files(config.node.ae_title, peer, files, on_result=on_result, timeout=args.timeout,
                            tls=client_tls(config))
    elapsed = time.perf_counter() - started
    failed = report.failed
    print(f"{report.sent} of {len(files)} sent to {peer.name} in {elapsed:.1f} s, {len(failed)} failed")
    if failed:
        if report.sent == 0 and all(r.unreachable for r in failed):
            return fail(EXIT_PEER, failed[0].reason)
        return fail(EXIT_FAILED, f"{len(failed)} instance(s) not stored by {peer.name}; first: {failed[0].path}: {failed[0].reason}")
    return EXIT_OK
