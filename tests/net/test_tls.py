"""DICOM over TLS with certificates the test makes: a peer stores over TLS with its certificate
and is refused on the plain port; a certificate that names someone else, one from an untrusted
CA, none at all, TLS 1.1 and plain text on the TLS port are refused and audited; a silent
connection holds up no one; DCMTK's storescu and Orthanc send over TLS, and Orthanc takes the
node's results over TLS."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from threading import Event
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from ai.phantom import make_phantom
from dicom_node.config import NodeConfig
from dicom_node.errors import ConfigError
from dicom_node.flow.worker import Worker
from dicom_node.service.node import Node
from dicom_node.storage.audit_chain import read_audit
from dicom_node.tools.orthanc import find_orthanc, free_port
from dicom_node.tools.synthetic import write_ct_series, write_volume_series

from ..conftest import TEST_SCU, Dcmtk
from ..support import processes
from ..support.certs import Authority, Issued
from ..support.peers import start_orthanc, wait_for


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("pki")
    hospital, stranger = Authority("hospital", folder / "hospital"), Authority("stranger", folder / "stranger")
    return {
        "ca": hospital.pem,
        "node": hospital.issue("ai-node.hospital.test", dns=["ai-node.hospital.test", "localhost"], ips=["127.0.0.1"]),
        "ct01": hospital.issue("ct01.hospital.test", dns=["ct01.hospital.test"]),
        "workstation": hospital.issue("workstation.hospital.test", dns=["workstation.hospital.test"]),
        "storescu": hospital.issue("storescu.hospital.test", dns=["storescu.hospital.test"]),
        "orthanc": hospital.issue("orthanc.hospital.test", dns=["orthanc.hospital.test"], ips=["127.0.0.1"]),
        "impostor": stranger.issue("ct01.hospital.test", dns=["ct01.hospital.test"]),
    }


def tls_config(make_config: Callable[..., NodeConfig], pki: dict[str, Any], **overrides: Any) -> NodeConfig:
    node = pki["node"]
    peers = [
        {"name": "scu", "ae_title": TEST_SCU, "host": "127.0.0.1", "port": 1},
        {"name": "ct01", "ae_title": "CT01", "host": "127.0.0.1", "port": 1, "tls": True, "tls_identity": "ct01.hospital.test"},
        {"name": "storescu", "ae_title": "STORESCU", "host": "127.0.0.1", "port": 1, "tls": True,
         "tls_identity": "storescu.hospital.test"},
    ]
    node_section = {"tls": {"port": 0, "certificate": str(node.certificate), "private_key": str(node.private_key),
                            "ca_certificates": str(pki["ca"]), "handshake_timeout_seconds": 3},
                    **overrides.pop("node", {})}
    return make_config(node=node_section, peers=overrides.pop("peers", peers), **overrides)


@pytest.fixture
def node(make_config: Callable[..., NodeConfig], start_node: Callable[[NodeConfig], Node], pki: dict[str, Any]) -> Node:
    return start_node(tls_config(make_config, pki))


def client_context(pki: dict[str, Any], issued: Issued | None, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    if issued is not None:
        context.load_cert_chain(str(issued.certificate), str(issued.private_key))
    if maximum is not None:
        with warnings.catch_warnings():  # offering an old protocol is the point here
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = maximum
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the old protocol be offered at all
    return context


def associate(port: int, calling: str, context: ssl.SSLContext | None, files: list[Path] = ()) -> Any:  # type: ignore[assignment]
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    for path in files:
        ae.add_requested_context(dcmread(path, stop_before_pixels=True).SOPClassUID, "1.2.840.10008.1.2.1")
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="AI_NODE",
                         tls_args=(context, "127.0.0.1") if context is not None else None)
    if not assoc.is_established:
        # pynetdicom leaves a requestor's TLS socket open when the acceptor dropped the
        # connection during or right after the handshake (TLS 1.3 finishes the client's side first).
        sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
        if sock is not None:
            sock.close()
    return assoc


def audit_of(node: Node) -> list[dict[str, Any]]:
    """The node's association records so far (each line is flushed as it is written)."""
    return [r for r in read_audit(node.config.audit.path) if r["event"] == "association"]


def test_a_peer_stores_over_tls_with_its_certificate_and_is_refused_on_the_plain_port(node: Node, pki: dict[str, Any],
                                                                                     tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "s", 2, 16, 16)
    assoc = associate(node.tls_port, "CT01", client_context(pki, pki["ct01"]), files)
    assert assoc.is_established
    assert isinstance(assoc.dul.socket.socket, ssl.SSLSocket)
    assert assoc.dul.socket.socket.version() in ("TLSv1.2", "TLSv1.3")
    assert [int(assoc.send_c_store(f).Status) for f in files] == [0, 0]
    assoc.release()
    assert node.index.query("SELECT count(*) AS n FROM instances WHERE calling_ae = 'CT01'")[0]["n"] == 2
    plain = associate(node.port, "CT01", None)
    assert plain.is_rejected  # the AE title alone is no identity
    other = associate(node.port, TEST_SCU, None)  # a plain peer stays on the plain port
    assert other.is_established
    other.release()
    wait_for(lambda: any(r["outcome"] == "rejected" for r in audit_of(node)), 10, "the refusal's audit line")
    [refused] = [r for r in audit_of(node) if r["outcome"] == "rejected"]
    assert (refused["calling_ae"], refused["reason"]) == ("CT01", "peer ct01 must connect over TLS")


def test_a_certificate_naming_someone_else_is_refused(node: Node, pki: dict[str, Any]) -> None:
    assoc = associate(node.tls_port, "CT01", client_context(pki, pki["workstation"]))
    assert assoc.is_rejected
    wait_for(lambda: any(r["outcome"] == "rejected" for r in audit_of(node)), 10, "the refusal's audit line")
    [refused] = [r for r in audit_of(node) if r["outcome"] == "rejected"]
    assert refused["reason"] == ("the client certificate (workstation.hospital.test) does not identify peer ct01 "
                                 "(expected ct01.hospital.test)")


@pytest.mark.parametrize(("case", "expected"), [
    ("untrusted CA", "client certificate missing or not from a trusted CA"),
    ("no certificate", "client certificate missing or not from a trusted CA"),
    ("TLS 1.1", "below"),
    ("plain text", "not TLS"),
])
def test_refused_at_the_handshake_and_audited(node: Node, pki: dict[str, Any], case: str, expected: str) -> None:
    if case == "plain text":
        assoc = associate(node.tls_port, "CT01", None)
    else:
        issued = {"untrusted CA": pki["impostor"], "no certificate": None, "TLS 1.1": pki["ct01"]}[case]
        context = client_context(pki, issued, ssl.TLSVersion.TLSv1_1 if case == "TLS 1.1" else None)
        assoc = associate(node.tls_port, "CT01", context)
    assert not assoc.is_established
    wait_for(lambda: [r for r in audit_of(node) if r["outcome"] == "rejected"], 10, "the refusal's audit line")
    [refused] = [r for r in audit_of(node) if r["outcome"] == "rejected"]
    assert refused["reason"].startswith("TLS: ") and expected in refused["reason"], refused
    ok = associate(node.tls_port, "CT01", client_context(pki, pki["ct01"]))  # the node took no harm
    assert ok.is_established and int(ok.send_c_echo().Status) == 0
    ok.release()


def test_a_silent_connection_holds_up_no_one(node: Node, pki: dict[str, Any]) -> None:
    with socket.create_connection(("127.0.0.1", node.tls_port)):  # connects, says nothing
        started = time.monotonic()
        assoc = associate(node.tls_port, "CT01", client_context(pki, pki["ct01"]))
        assert assoc.is_established and int(assoc.send_c_echo().Status) == 0
        assoc.release()
        assert time.monotonic() - started < 1.5
        wait_for(lambda: [r for r in audit_of(node) if r["outcome"] == "rejected"], 10, "the silent client's timeout")
    [refused] = [r for r in audit_of(node) if r["outcome"] == "rejected"]
    assert "no TLS handshake in time" in refused["reason"]


def test_tls_configuration_mistakes_are_named(make_config: Callable[..., NodeConfig], pki: dict[str, Any],
                                              tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="peers ct01 use tls: node.tls"):
        make_config(peers=[{"name": "ct01", "ae_title": "CT01", "host": "127.0.0.1", "port": 1, "tls": True}])
    with pytest.raises(ConfigError, match="node.plain: false turns the plain port off, so node.tls must be set"):
        make_config(node={"plain": False})
    with pytest.raises(ConfigError, match="require_client_certificate needs ca_certificates"):
        make_config(node={"tls": {"certificate": "a", "private_key": "b"}})
    from dicom_node.net.tls import server_context

    config = make_config(node={"tls": {"certificate": str(tmp_path / "missing.pem"), "private_key": "k",
                                       "ca_certificates": str(pki["ca"])}})
    with pytest.raises(ConfigError, match="node.tls: cannot load certificate"):
        server_context(config.node.tls)


def test_tls_only_serves_the_tls_port(make_config: Callable[..., NodeConfig], start_node: Callable[[NodeConfig], Node],
                                      pki: dict[str, Any]) -> None:
    node = start_node(tls_config(make_config, pki, node={"plain": False}))
    assert node.port == node.tls_port
    assoc = associate(node.tls_port, "CT01", client_context(pki, pki["ct01"]))
    assert assoc.is_established
    assoc.release()


def test_dcmtk_storescu_sends_over_tls(node: Node, pki: dict[str, Any], dcmtk: Dcmtk, tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "s", 3, 16, 16, seed=3)
    issued = pki["storescu"]
    result = processes.run([dcmtk.storescu, "+tls", str(issued.private_key), str(issued.certificate), "+cf", str(pki["ca"]),
                             "-aet", "STORESCU", "-aec", "AI_NODE", "127.0.0.1", str(node.tls_port), *map(str, files)],
                            env=dcmtk.env(), timeout=60)
    assert result.returncode == 0, result.stderr
    assert node.index.query("SELECT count(*) AS n FROM instances WHERE calling_ae = 'STORESCU'")[0]["n"] == 3
    # The same program with the right AE title but without TLS: refused.
    plain = processes.run([dcmtk.storescu, "-aet", "STORESCU", "-aec", "AI_NODE", "127.0.0.1", str(node.port),
                            str(files[0])], env=dcmtk.env(), timeout=60)
    assert plain.returncode != 0 and "Calling AE Title Not Recognized" in plain.stderr


@pytest.fixture
def orthanc_over_tls(tmp_path: Path, pki: dict[str, Any]) -> Iterator[Callable[..., Any]]:
    started: list[Any] = []

    def start(node_tls_port: int, port: int) -> Any:
        issued = pki["orthanc"]
        orthanc = start_orthanc(tmp_path / "orthanc", port=port, modalities={
            "ainode": {"AET": "AI_NODE", "Host": "127.0.0.1", "Port": node_tls_port, "UseDicomTls": True}},
            extra_config={"DicomTlsEnabled": True, "DicomTlsCertificate": str(issued.certificate),
                          "DicomTlsPrivateKey": str(issued.private_key), "DicomTlsTrustedCertificates": str(pki["ca"]),
                          "DicomTlsRemoteCertificateRequired": True})
        started.append(orthanc)
        return orthanc

    if find_orthanc() is None:
        pytest.fail("Orthanc is not installed (Debian package orthanc)")
    yield start
    for orthanc in started:
        orthanc.stop()


def test_orthanc_sends_over_tls_and_takes_the_results_over_tls(make_config: Callable[..., NodeConfig],
                                                                start_node: Callable[[NodeConfig], Node],
                                                                orthanc_over_tls: Callable[..., Any], pki: dict[str, Any],
                                                                tmp_path: Path) -> None:
    orthanc_port = free_port()
    config = tls_config(make_config, pki, peers=[
        {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc_port, "tls": True,
         "tls_identity": "orthanc.hospital.test"}],
        routes=[{"name": "ct", "match": {"modality": "CT"}, "pipeline": "baseline", "destinations": ["sender"]}],
        pipelines={"baseline": {"kind": "classical"}}, jobs={"workers": 0},
        results={"path": str(tmp_path / "results")}, delivery={"interval_seconds": 0.2})
    node = start_node(config)
    orthanc = orthanc_over_tls(node.tls_port, orthanc_port)
    phantom = make_phantom(61, shape=(24, 64, 64), spacing=(3.0, 3.0, 3.0), liver_lesions=(0, 0), lung_nodules=(0, 0))
    files = write_volume_series(phantom.volume, tmp_path / "series", seed=61)
    for path in files:
        orthanc.upload(path)
    study_uid = str(dcmread(files[0]).StudyInstanceUID)
    orthanc.call("POST", "/modalities/ainode/store", {"Resources": [orthanc.study_id(study_uid)], "Synchronous": True})
    assert node.index.query("SELECT count(*) AS n FROM instances WHERE calling_ae = 'ORTHANC'")[0]["n"] == len(files)
    wait_for(lambda: node.index.query("SELECT 1 FROM jobs"), 30, "the series to be routed")
    assert Worker(config).run(Event(), burst=True) == 1
    wait_for(lambda: {s["MainDicomTags"].get("Modality") for s in orthanc.series_of_study(study_uid)} >= {"SEG", "SR"}, 60,
             "the SEG and SR in Orthanc, over TLS")
    delivered = node.index.query("SELECT peer, state FROM deliveries")
    assert {(d["peer"], d["state"]) for d in delivered} == {("pacs", "delivered")}
    records = audit_of(node)
    assert any(r["calling_ae"] == "ORTHANC" and r["instances_stored"] == len(files) for r in records)
    assert not [r for r in records if r["outcome"] == "rejected"]
    print(f"\nOrthanc -> node over TLS: {len(files)} instances; SEG and SR back over TLS: {json.dumps(delivered and 'ok')}")


def test_serve_hands_tls_connections_to_its_listener_processes(tmp_path: Path, pki: dict[str, Any]) -> None:
    """Under `serve` the supervisor accepts on both ports and a listener process does the handshake."""
    import sys

    import yaml

    from ..conftest import config_dict
    from ..support.peers import stop_process, wait_for_port

    port, tls_port = free_port(), free_port()
    data = config_dict(tmp_path, node={"ae_title": "AI_NODE", "host": "127.0.0.1", "port": port, "workers": 2, "tls": {
        "port": tls_port, "certificate": str(pki["node"].certificate), "private_key": str(pki["node"].private_key),
        "ca_certificates": str(pki["ca"])}},
        peers=[{"name": "ct01", "ae_title": "CT01", "host": "127.0.0.1", "port": 1, "tls": True,
                "tls_identity": "ct01.hospital.test"}])
    (tmp_path / "node.yaml").write_text(yaml.safe_dump(data))
    log = open(tmp_path / "serve.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "dicom_node.cli", "--config", str(tmp_path / "node.yaml"), "serve"],
                            stdout=log, stderr=subprocess.STDOUT)
    processes.watch(proc, log=tmp_path / "serve.log", name="dicom-node serve")
    try:
        wait_for_port(tls_port, proc)
        files = write_ct_series(tmp_path / "s", 2, 16, 16, seed=9)
        sessions = [associate(tls_port, "CT01", client_context(pki, pki["ct01"]), files) for _ in range(2)]
        assert all(a.is_established for a in sessions)  # both open at once: one in each listener process
        for assoc in sessions:
            assert [int(assoc.send_c_store(f).Status) for f in files] == [0, 0]
            assoc.release()
        assert not associate(port, "CT01", None).is_established  # its title on the plain port: refused
        assert not associate(tls_port, "CT01", client_context(pki, pki["impostor"])).is_established
        # two released, three rejected (the probe, the plain-port attempt, the impostor): each
        # written by the process that handled it, in no fixed order
        wait_for(lambda: len([r for r in read_audit(tmp_path / "audit.jsonl") if r.get("event") == "association"]) >= 5, 10,
                 "five association records")
        records = [r for r in read_audit(tmp_path / "audit.jsonl") if r.get("event") == "association"]
        assert len({r["pid"] for r in records if r["outcome"] == "released"}) == 2
        reasons = sorted(r["reason"].split(" (")[0] for r in records if r["outcome"] == "rejected")
        assert reasons == ["TLS: client certificate missing or not from a trusted CA",
                           "TLS: closed before the TLS handshake",  # wait_for_port's probe
                           "peer ct01 must connect over TLS"]
    finally:
        stop_process(proc, 30)
        log.close()


def test_tls_both_directions_random_sizes_and_pdu_lengths_under_cpu_contention(
        make_config: Callable[..., NodeConfig], start_node: Callable[[NodeConfig], Node], pki: dict[str, Any],
        tmp_path: Path) -> None:
    """The event-driven DUL wait on TLS sockets (decrypted bytes select() cannot see: pending()),
    searched: seeded random instance sizes (700 B to 4.5 MiB) and maximum PDU lengths, into the
    node over TLS and forwarded by its sender over TLS to a TLS SCP, with a core kept busy; every
    instance stored and forwarded byte for byte."""
    import os
    import random

    from pynetdicom import evt
    from pynetdicom.sop_class import CTImageStorage

    from ..conftest import dataset_bytes
    from ..support import stress

    seed = int(os.environ.get("DICOM_NODE_STRESS_SEED") or random.SystemRandom().randrange(1, 10**6))
    print(f"\nTLS search seed {seed} (DICOM_NODE_STRESS_SEED={seed} replays it)")
    rng = random.Random(seed)
    pool = stress.make_templates(tmp_path / "templates")
    templates, weights = [t for t, _ in pool], [w for _, w in pool]

    received: dict[str, bytes] = {}  # the receiving SCP, TLS with a client certificate required

    def on_store(event: Any) -> int:
        try:  # the node in this process set pynetdicom to receive datasets into files
            data = dataset_bytes(Path(event.dataset_path))
        except AttributeError:
            data = event.encoded_dataset(include_meta=False)
        received[str(event.request.AffectedSOPInstanceUID)] = data
        return 0

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki["ca"]))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_cert_chain(str(pki["orthanc"].certificate), str(pki["orthanc"].private_key))
    scp = AE(ae_title="ARCHIVE")
    scp.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    scp.maximum_pdu_size = rng.choice([16384, 1 << 20, 0])
    archive = scp.start_server(("127.0.0.1", 0), block=False, ssl_context=server_ctx, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        config = tls_config(make_config, pki, peers=[
            {"name": "ct01", "ae_title": "CT01", "host": "127.0.0.1", "port": 1, "tls": True, "tls_identity": "ct01.hospital.test"},
            {"name": "archive", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": archive.server_address[1], "send": False,
             "tls": True, "tls_identity": "orthanc.hospital.test"}],
            routes=[{"name": "archive", "match": {"modality": "CT"}, "forward": ["archive"]}],
            delivery={"interval_seconds": 0.2}, completion={"series_stable_seconds": 0.5, "sweep_interval_seconds": 0.2})
        node = start_node(config)
        expected: dict[str, bytes] = {}
        number = 0
        with stress.cpu_burner(True, 300):
            for association in range(10):
                ae = AE(ae_title="CT01")
                ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
                ae.maximum_pdu_size = rng.choice([16384, 65536, 1 << 20, 0])
                assoc = ae.associate("127.0.0.1", node.tls_port, ae_title="AI_NODE",
                                     tls_args=(client_context(pki, pki["ct01"]), "127.0.0.1"))
                assert assoc.is_established, f"seed {seed}: association {association}"
                for _ in range(rng.randint(1, 4)):
                    template = rng.choices(templates, weights)[0]
                    number += 1
                    uid, path = template.write(tmp_path / "send", number)
                    assert int(assoc.send_c_store(path).Status) == 0, f"seed {seed}: {uid}"
                    expected[uid] = template.dataset_with(uid)
                assoc.release()
            wait_for(lambda: set(received) >= set(expected), 120, f"every instance forwarded over TLS (seed {seed})")
        for uid, data in expected.items():
            [row] = node.index.query("SELECT path FROM instances WHERE sop_instance_uid = ?", (uid,))
            assert dataset_bytes(Path(row["path"])) == data, f"seed {seed}: {uid} stored changed"
            assert received[uid] == data, f"seed {seed}: {uid} forwarded changed"
        print(f"{len(expected)} instances, {sum(map(len, expected.values())) / 2**20:.1f} MiB in and out over TLS")
    finally:
        archive.shutdown()
