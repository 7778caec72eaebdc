"""Differential stress runs of both directions of the node's DICOM traffic.

Listener direction: associations to a node (a ``dicom-node serve`` subprocess) from three kinds
of sender, drawn at random per association: the raw peer (``raw_peer.RawSCU``: maximum PDU
sizes from 200 bytes to unlimited, every framing of ``raw_peer.FRAGMENTATIONS``, some
associations trickled one byte per TCP segment, a few flawed requests), a pynetdicom SCU and
DCMTK's ``storescu``, several associations at once, instances from a few hundred bytes to
4.5 MiB. Sender direction: the node's own ``scu.send_files`` (the code path of results and
forwarding) to the raw SCP (random maximum PDU, framing and pacing of its responses), DCMTK's
``storescp`` and a pynetdicom SCP.

Checked for every association: each request got exactly one response, carrying its Message ID;
every Success left a byte-identical data set at the receiver; a flawed request got the status
expected of it. ``compare`` then says whether two runs of the same plan (fast paths on / off)
gave the same statuses. Everything is bounded: a plan has a fixed number of associations, every
socket and subprocess a timeout, and the CPU burner is stopped by its PID.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.filereader import _read_file_meta_info, read_preamble

from dicom_node.tools.synthetic import write_ct_series

from .processes import start
from .raw_peer import FRAGMENTATIONS, PeerClosed, RawSCP, RawSCU, fragment, raw_store_request, store_request

#: (rows, columns, weight): 8x8 is a ~700-byte instance, 1536x1536 4.5 MiB.
SIZES = ((8, 8, 30), (32, 32, 25), (64, 64, 20), (256, 256, 12), (512, 512, 8), (1024, 1024, 3), (1536, 1536, 2))
SUCCESS, CANNOT_UNDERSTAND = 0x0000, 0xC210
CALLING = "TEST_SCU"


@dataclass(frozen=True)
class Template:
    """A source instance whose SOP Instance UID is rewritten (same length) for every send."""

    sop_class: str
    transfer_syntax: str
    uid: str
    file_bytes: bytes
    dataset_offset: int

    def variant_uid(self, number: int) -> str:
        """The SOP Instance UID of send ``number``: as long as the template's."""
        head, last = self.uid.rsplit(".", 1)
        uid = f"{head}.{last[0]}{number:0{len(last) - 1}d}"
        assert len(uid) == len(self.uid), "more sends than the UID's digits can number"
        return uid

    def file_with(self, uid: str) -> bytes:
        """Part 10 file bytes with the SOP Instance UID (data set and File Meta) replaced."""
        return self.file_bytes.replace(self.uid.encode(), uid.encode())

    def dataset_with(self, uid: str) -> bytes:
        return self.file_with(uid)[self.dataset_offset:]

    def write(self, folder: Path, number: int) -> tuple[str, Path]:
        """Send ``number``'s file, written to ``folder``: (its SOP Instance UID, its path)."""
        uid = self.variant_uid(number)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{uid}.dcm"
        path.write_bytes(self.file_with(uid))
        return uid, path


def make_templates(folder: Path) -> list[tuple[Template, int]]:
    """One synthetic CT instance per size of ``SIZES``, with its weight."""
    out = []
    for number, (rows, columns, weight) in enumerate(SIZES):
        [path] = write_ct_series(folder / f"{rows}x{columns}", 1, rows, columns, seed=1000 + number)
        data = path.read_bytes()
        with open(path, "rb") as fp:
            read_preamble(fp, False)
            meta = _read_file_meta_info(fp)
            offset = fp.tell()
        out.append((Template(str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID),
                             str(meta.MediaStorageSOPInstanceUID), data, offset), weight))
    return out


@dataclass
class Item:
    template: int
    uid: str
    flaw: str | None = None  # "truncated" (Pixel Data cut short) or "long-uid" (65 characters)


@dataclass
class Plan:
    number: int
    sender: str  # raw | pynetdicom | storescu   (listener direction)
    receiver: str  # raw | storescp | pynetdicom (sender direction)
    items: list[Item]
    max_pdu: int
    mode: str
    trickle: int


@dataclass
class Outcome:
    number: int
    statuses: list[int | None]
    problems: list[str] = field(default_factory=list)


def make_plans(templates: list[tuple[Template, int]], associations: int, seed: int, instances: tuple[int, int] = (1, 8),
               flaws: bool = True, senders: tuple[str, ...] = ("raw", "raw", "pynetdicom", "storescu")) -> list[Plan]:
    rng = random.Random(seed)
    weights = [w for _, w in templates]
    plans, sent = [], 0
    for number in range(associations):
        sender = rng.choice(senders)
        items = []
        for _ in range(rng.randint(*instances)):
            index = rng.choices(range(len(templates)), weights)[0]
            sent += 1
            uid = templates[index][0].variant_uid(seed * 10_000_000 + sent)
            flaw = None
            if flaws and sender == "raw" and rng.random() < 0.04:
                flaw = rng.choice(["truncated", "long-uid"])
            items.append(Item(index, uid, flaw))
        max_pdu = rng.choice([0, 200, 1000, 4096, 16382, 65536, 262144, 1 << 20, rng.randint(100, 20000)])
        if sender != "raw":
            max_pdu = rng.choice([4096, 16382, 65536, 131072])  # what storescu accepts
        plans.append(Plan(number, sender, rng.choice(["raw", "raw", "storescp", "pynetdicom"]), items, max_pdu,
                          rng.choice(FRAGMENTATIONS), rng.choice([0, 0, 0, 0, 300])))
    return plans


def expected_status(item: Item) -> int:
    return CANNOT_UNDERSTAND if item.flaw else SUCCESS


@contextmanager
def cpu_burner(enabled: bool, seconds: float = 600) -> Iterator[None]:
    """A process that spins on one core beside the node (stopped by its PID, at most ``seconds``)."""
    if not enabled:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", f"import time\nend = time.monotonic() + {seconds}\n"
                             "while time.monotonic() < end: pass"])
    try:
        yield
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _stored_dataset(storage: Path, uid: str) -> bytes | None:
    matches = list(storage.glob(f"*/*/{uid}.dcm"))
    if not matches:
        return None
    with open(matches[0], "rb") as fp:
        read_preamble(fp, False)
        _read_file_meta_info(fp)
        return fp.read()


# -- listener direction ---------------------------------------------------------------------

def _send_raw(plan: Plan, templates: list[Template], port: int, rng: random.Random) -> tuple[list[int | None], list[str]]:
    contexts = sorted({(templates[i.template].sop_class, templates[i.template].transfer_syntax) for i in plan.items})
    scu = RawSCU("127.0.0.1", port, CALLING, "AI_NODE", [(c, [t]) for c, t in contexts], max_pdu=plan.max_pdu,
                 trickle=plan.trickle, timeout=60)
    statuses: list[int | None] = []
    problems: list[str] = []
    try:
        for message_id, item in enumerate(plan.items, start=1):
            template = templates[item.template]
            context_id, _ = scu.accepted[template.sop_class]
            dataset = template.dataset_with(item.uid)
            if item.flaw == "truncated":  # cut inside the Pixel Data value (at least 128 bytes here)
                dataset = dataset[: len(dataset) - 1 - len(dataset) % 97]
            if item.flaw == "long-uid":
                command = raw_store_request(message_id, template.sop_class, "1." + "9" * 63)
            else:
                command = store_request(message_id, template.sop_class, item.uid)
            scu.send(fragment(command, dataset, context_id, scu.peer_max_pdu, rng, plan.mode))
            answer = scu.read_message().command
            if int(answer.MessageIDBeingRespondedTo) != message_id:
                problems.append(f"response to message {answer.MessageIDBeingRespondedTo} where {message_id} was due")
            statuses.append(int(answer.Status))
        scu.release()
    except (PeerClosed, OSError) as exc:
        problems.append(f"association ended early: {type(exc).__name__}: {exc}")
        scu.close()
    return statuses + [None] * (len(plan.items) - len(statuses)), problems


def _write_files(plan: Plan, templates: list[Template], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, item in enumerate(plan.items):
        template = templates[item.template]
        path = folder / f"{number:03d}.dcm"
        path.write_bytes(template.file_with(item.uid))
        paths.append(path)
    return paths


def _send_pynetdicom(plan: Plan, templates: list[Template], port: int, folder: Path) -> tuple[list[int | None], list[str]]:
    """A pynetdicom SCU, with the send/reactor hand-over fix: pynetdicom 3.0.4's own lets its
    reactor take a response under load (a 500-association run without it lost one association's
    responses, the sender waiting out its DIMSE timeout), which would be the peer's fault."""
    from pynetdicom import AE

    from dicom_node.net.patches.pynetdicom_tuning import install_fixes

    install_fixes()

    ae = AE(ae_title=CALLING)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for sop_class, ts in {(templates[i.template].sop_class, templates[i.template].transfer_syntax) for i in plan.items}:
        ae.add_requested_context(sop_class, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title="AI_NODE", max_pdu=plan.max_pdu)
    if not assoc.is_established:
        return [None] * len(plan.items), ["association not established"]
    statuses: list[int | None] = []
    try:
        for path in _write_files(plan, templates, folder):
            status = assoc.send_c_store(path) if assoc.is_established else None
            statuses.append(int(status.Status) if status is not None and "Status" in status else None)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses, []


def _send_storescu(plan: Plan, templates: list[Template], port: int, folder: Path, storescu: str) -> tuple[list[int | None], list[str]]:
    paths = _write_files(plan, templates, folder)
    env = {**os.environ, "TCP_NODELAY": "1"}
    done = subprocess.run([storescu, "-v", "-aet", CALLING, "-aec", "AI_NODE", "--max-pdu", str(plan.max_pdu),
                           "127.0.0.1", str(port), *map(str, paths)], capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if "Received Store Response" in line]
    statuses: list[int | None] = [SUCCESS if "(Success)" in line else CANNOT_UNDERSTAND for line in lines]
    problems = [] if done.returncode == 0 else [f"storescu exit {done.returncode}: {done.stderr[-300:]}"]
    return statuses + [None] * (len(paths) - len(statuses)), problems


def run_listener(plans: list[Plan], templates: list[Template], port: int, storage: Path, work: Path, storescu: str,
                 concurrency: int = 4, seed: int = 0) -> list[Outcome]:
    """Every plan's association to the node on ``port``; checks each outcome against ``storage``."""

    def one(plan: Plan) -> Outcome:
        rng = random.Random(seed * 1_000_003 + plan.number)
        folder = work / f"a{plan.number:05d}"
        try:
            if plan.sender == "raw":
                statuses, problems = _send_raw(plan, templates, port, rng)
            elif plan.sender == "pynetdicom":
                statuses, problems = _send_pynetdicom(plan, templates, port, folder)
            else:
                statuses, problems = _send_storescu(plan, templates, port, folder, storescu)
        except Exception as exc:  # a check, not a crash: recorded as this association's problem
            statuses, problems = [None] * len(plan.items), [f"{type(exc).__name__}: {exc}"]
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        for item, status in zip(plan.items, statuses):
            if status is None:
                problems.append(f"no response for {item.uid}")
            elif status != expected_status(item):
                problems.append(f"{item.uid} ({item.flaw or 'clean'}): status 0x{status:04X}")
            if status == SUCCESS:
                if _stored_dataset(storage, item.uid) != templates[item.template].dataset_with(item.uid):
                    problems.append(f"{item.uid}: Success, but the stored data set differs from the one sent")
        return Outcome(plan.number, statuses, problems)

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, plans))


# -- sender direction -----------------------------------------------------------------------

@dataclass
class Receivers:
    """The peers the node's sender sends to in one run, each on its own loopback port."""

    raw: RawSCP
    storescp: list[tuple[subprocess.Popen[bytes], int, Path]]
    pynetdicom: list[tuple[object, int, Path]]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def stop(self) -> None:
        self.raw.stop()
        for proc, _, _ in self.storescp:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for server, _, _ in self.pynetdicom:
            server.shutdown()  # type: ignore[attr-defined]


def start_receivers(work: Path, storescp: str, seed: int) -> Receivers:
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    from .peers import free_port, wait_for_port

    raw = RawSCP(work / "raw", seed=seed).start()
    dcmtk = []
    for number, max_pdu in enumerate([4096, 16384, 131072]):
        out = work / f"storescp{number}"
        out.mkdir(parents=True)
        port = free_port()
        proc = start([storescp, "+B", "--max-pdu", str(max_pdu), "-od", str(out), "-aet", "STORESCP", str(port)],
                     work / f"storescp{number}.log", name=f"storescp {number}", env={**os.environ, "TCP_NODELAY": "1"}).proc
        wait_for_port(port, proc)
        dcmtk.append((proc, port, out))
    servers = []
    for number, max_pdu in enumerate([0, 2048]):
        out = work / f"pynetdicom{number}"
        out.mkdir(parents=True)

        def on_store(event: object, out: Path = out) -> int:
            uid = str(event.request.AffectedSOPInstanceUID)  # type: ignore[attr-defined]
            spooled = getattr(event, "dataset_path", None)  # pynetdicom's chunked receive (a node in this process set it)
            if spooled is not None:
                with open(spooled, "rb") as fp:
                    read_preamble(fp, False)
                    _read_file_meta_info(fp)
                    data = fp.read()
            else:
                data = bytes(event.encoded_dataset(include_meta=False))  # type: ignore[attr-defined]
            (out / f"{uid}.bin").write_bytes(data)
            return SUCCESS

        ae = AE(ae_title="PYNETDICOM")
        ae.maximum_pdu_size = max_pdu
        ae.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        servers.append((server, int(server.server_address[1]), out))
    return Receivers(raw, dcmtk, servers)


def _received(receivers: Receivers, plan: Plan, uid: str) -> bytes | None:
    if plan.receiver == "raw":
        path = receivers.raw.folder / f"{uid}.bin"
        return path.read_bytes() if path.exists() else None
    if plan.receiver == "pynetdicom":
        for _, _, out in receivers.pynetdicom:
            path = out / f"{uid}.bin"
            if path.exists():
                return path.read_bytes()
        return None
    for _, _, out in receivers.storescp:
        for path in out.glob(f"*{uid}*"):
            with open(path, "rb") as fp:
                read_preamble(fp, False)
                _read_file_meta_info(fp)
                return fp.read()
    return None


def run_sender(plans: list[Plan], templates: list[Template], receivers: Receivers, work: Path,
               concurrency: int = 4) -> list[Outcome]:
    """Every plan's files sent with the node's ``send_files`` to the plan's kind of receiver."""
    from dicom_node.config import Peer
    from dicom_node.net.scu import send_files

    def one(plan: Plan) -> Outcome:
        rng = random.Random(plan.number)
        if plan.receiver == "raw":
            port, title = receivers.raw.port, receivers.raw.ae_title
        elif plan.receiver == "storescp":
            port, title = rng.choice(receivers.storescp)[1], "STORESCP"
        else:
            port, title = rng.choice(receivers.pynetdicom)[1], "PYNETDICOM"
        folder = work / f"s{plan.number:05d}"
        clean = Plan(plan.number, plan.sender, plan.receiver, [Item(i.template, i.uid) for i in plan.items],
                     plan.max_pdu, plan.mode, plan.trickle)
        paths = _write_files(clean, templates, folder)
        problems: list[str] = []
        try:
            report = send_files("AI_NODE", Peer(name=plan.receiver, ae_title=title, host="127.0.0.1", port=port),
                                paths, timeout=60)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        by_path = {r.path: r for r in report.results}
        statuses: list[int | None] = []
        for path, item in zip(paths, clean.items):
            result = by_path.get(path)
            statuses.append(None if result is None else result.status)
            if result is None or result.status is None:
                problems.append(f"{item.uid}: no response ({result.reason if result else 'not reported'})")
                continue
            if result.status != SUCCESS:
                problems.append(f"{item.uid}: status 0x{result.status:04X} {result.reason}")
                continue
            if _received(receivers, plan, item.uid) != templates[item.template].dataset_with(item.uid):
                problems.append(f"{item.uid}: Success, but {plan.receiver} holds other bytes")
        if len(report.results) != len(paths):
            problems.append(f"{len(report.results)} results for {len(paths)} files")
        return Outcome(plan.number, statuses, problems)

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, plans))


# -- summaries --------------------------------------------------------------------------------

def problems(outcomes: list[Outcome]) -> list[str]:
    return [f"association {o.number}: {p}" for o in outcomes for p in o.problems]


def compare(first: list[Outcome], second: list[Outcome]) -> list[str]:
    """Associations whose statuses differ between two runs of the same plans."""
    return [f"association {a.number}: {a.statuses} vs {b.statuses}" for a, b in zip(first, second)
            if a.statuses != b.statuses]


def requests(outcomes: list[Outcome]) -> int:
    return sum(len(o.statuses) for o in outcomes)


def unexpected_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.search(r"Received unexpected|DIMSE timeout reached", line)]
