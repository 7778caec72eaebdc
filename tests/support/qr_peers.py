"""Query/retrieve SCPs for the tests and benchmarks, on free loopback ports: DCMTK's dcmqrscp
(configured by a file written here, its database filled by dcmqridx) and Orthanc (with the node
in its modalities, so it accepts the node's C-FIND/C-MOVE/C-GET and knows where to move to)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from tests.support.peers import PeerProcess, dcmtk_env, free_port, start_orthanc, system_binary, wait_for_port
from tests.support.processes import start

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def start_dcmqrscp(workdir: Path, files: list[Path], node_ae: str, node_port: int, ae_title: str = "DCMQRSCP") -> PeerProcess:
    """dcmqrscp serving ``files`` (indexed with dcmqridx), able to move to the node. It forks a
    child per association (Debian's 3.6.7 crashes after its first association in --single-process
    mode); the children end with their associations."""
    database = workdir / "db"
    database.mkdir(parents=True, exist_ok=True)
    port = free_port()
    while port == node_port:  # free_port() only asks the kernel: the node's port may not be bound yet
        port = free_port()
    config = workdir / "dcmqrscp.cfg"
    config.write_text(f"""NetworkTCPPort = {port}
MaxPDUSize = 131072
MaxAssociations = 16

HostTable BEGIN
ainode = ({node_ae}, 127.0.0.1, {node_port})
HostTable END

VendorTable BEGIN
VendorTable END

AETable BEGIN
{ae_title} {database} RW (2000, 4096mb) ANY
AETable END
""")
    if files:
        subprocess.run([system_binary("dcmqridx"), str(database), *map(str, files)], check=True, capture_output=True,
                       timeout=300)
    proc = start([system_binary("dcmqrscp"), "-c", str(config), "-dhl"], workdir / "dcmqrscp.log",
                 name="dcmqrscp", env=dcmtk_env()).proc
    wait_for_port(port, proc)
    return PeerProcess("dcmqrscp", ae_title, port, proc, workdir)


def start_qr_orthanc(workdir: Path, node_ae: str, node_port: int, dicomweb: bool = False, **extra: Any) -> Any:
    """Orthanc that knows the node as modality ``ainode`` (for C-MOVE), with its DICOMweb plugin on request."""
    config: dict[str, Any] = {"DicomAlwaysAllowFind": True, "DicomAlwaysAllowGet": True, "DicomAlwaysAllowMove": True,
                              **extra}
    if dicomweb:
        config.update({"Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}})
    port = free_port()
    while port == node_port:  # free_port() only asks the kernel: the node's port may not be bound yet
        port = free_port()
    return start_orthanc(workdir, modalities={"ainode": [node_ae, "127.0.0.1", node_port]}, extra_config=config, port=port)
