from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.config import Durability, load_config, parse_config, resolve_config_path
from dicom_node.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_shipped_config_is_valid_and_documented_keys_exist() -> None:
    config = load_config(REPO / "config" / "node.yaml", environ={})
    assert config.node.ae_title == "AI_NODE"
    assert config.node.port == 11112
    assert config.storage.durability is Durability.FSYNC
    assert config.completion.series_stable_seconds == 10
    assert config.completion.study_stable_seconds == 30
    pacs = config.peer("pacs")
    assert (pacs.ae_title, pacs.host, pacs.port, pacs.send, pacs.receive) == ("ORTHANC", "127.0.0.1", 4242, True, True)
    # The uncertainty map is 4 bytes per voxel: a site asks for it, it is not sent by default.
    assert config.results.uncertainty_map is False and config.results.map_series_number == 9003


def test_dicomweb_peers_parse() -> None:
    """A DICOMweb-only archive and a STOW-RS client need no DIMSE address; the AE title they are
    recorded under defaults to the name, and neither is a DIMSE caller."""
    config = parse_config({"peers": [
        {"name": "cloud-archive", "dicomweb": {"url": "https://dicom.example/v1/dicomWeb",
                                              "auth": {"kind": "bearer", "token_file": "/run/secrets/t"}}},
        {"name": "uploader", "stow": True, "stow_token_file": "/run/secrets/u", "send": True},
    ]})
    archive, uploader = config.peers
    assert (archive.ae_title, archive.has_dimse, archive.address) == ("CLOUD-ARCHIVE", False, "https://dicom.example/v1/dicomWeb")
    assert uploader.ae_title == "UPLOADER"
    assert config.callers() == [] and config.stow_clients() == [uploader]


def test_issue_example_parses() -> None:
    config = parse_config(
        {
            "node": {"ae_title": "AI_NODE", "host": "127.0.0.1", "port": 11112},
            "storage": {"path": "./var/storage", "durability": "none"},
            "index": {"path": "./var/index.sqlite"},
            "peers": [{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242, "send": True, "receive": True}],
            "completion": {"series_stable_seconds": 10, "study_stable_seconds": 30},
        }
    )
    assert config.storage.durability is Durability.NONE
    assert [p.name for p in config.callers()] == ["pacs"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"node": {"port": 70000}}, "node.port: Input should be less than or equal to 65535 (got 70000)"),
        ({"node": {"ae_title": "A" * 17}}, "node.ae_title: Value error, an AE title has at most 16 characters"),
        ({"node": {"ae_title": "BAD\\AE"}}, "node.ae_title: Value error, an AE title uses printable ASCII without backslash"),
        ({"storage": {"durability": "sometimes"}}, "storage.durability: Input should be 'fsync' or 'none'"),
        ({"storage": {"pathh": "x"}}, "storage.pathh: unknown key"),
        ({"peers": [{"name": "pacs", "ae_title": "ORTHANC", "host": "h"}]},
         "peers[0]: Value error, peer pacs: host and port go together"),
        ({"peers": [{"name": "pacs", "ae_title": "ORTHANC"}]}, "peers[0]: Value error, peer pacs: give its DIMSE address"),
        ({"peers": [{"name": "cloud", "dicomweb": {"url": "https://x/dicomweb", "auth": {"kind": "basic", "user": "u"}}}]},
         "peers[0].dicomweb.auth: Value error, dicomweb.auth kind basic needs password_file"),
        ({"peers": [{"name": "up", "stow": True}]}, "peers[0]: Value error, peer up: stow: true needs stow_token_file"),
        ({"peers": [{"name": "pacs", "ae_title": "PACS", "host": "h", "port": 1},
                    {"name": "pacs2", "ae_title": "PACS", "stow": True, "stow_token_file": "/t"}]},
         "peers: Value error, peer pacs2 (stow: true) has AE title 'PACS', as pacs has"),
        (
            {"peers": [{"name": "a", "ae_title": "A", "host": "h", "port": 1}, {"name": "a", "ae_title": "B", "host": "h", "port": 2}]},
            "peers: Value error, peer names must be unique, repeated: a",
        ),
        ({"completion": {"series_stable_seconds": 0}}, "completion.series_stable_seconds: Input should be greater than 0"),
        ([1, 2], "(top level): expected a mapping of sections"),
    ],
)
def test_bad_values_name_the_key(data: object, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "node.yaml")
    assert f"node.yaml: {expected}" in str(info.value)


def test_environment_overrides_common_keys(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("node: {ae_title: FROM_FILE, port: 104}\n")
    config = load_config(path, environ={"DICOM_NODE_AE_TITLE": "FROM_ENV", "DICOM_NODE_PORT": "11113", "DICOM_NODE_DURABILITY": "none"})
    assert config.node.ae_title == "FROM_ENV"
    assert config.node.port == 11113
    assert config.storage.durability is Durability.NONE


def test_bad_environment_override_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("{}\n")
    with pytest.raises(ConfigError, match=r"node\.port: Input should be a valid integer.*'eleven'"):
        load_config(path, environ={"DICOM_NODE_PORT": "eleven"})


def test_missing_and_unparsable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "nope.yaml", environ={})
    broken = tmp_path / "broken.yaml"
    broken.write_text("node:\n  port: [1\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_config(broken, environ={})


def test_config_path_resolution() -> None:
    assert resolve_config_path("a.yaml", {"DICOM_NODE_CONFIG": "b.yaml"}) == Path("a.yaml")
    assert resolve_config_path(None, {"DICOM_NODE_CONFIG": "b.yaml"}) == Path("b.yaml")
    assert resolve_config_path(None, {}) == Path("config/node.yaml")


def test_unknown_peer_lists_known_ones() -> None:
    config = parse_config({"peers": [{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}]})
    with pytest.raises(ConfigError, match=r"no peer named 'viewer' \(known: pacs\)"):
        config.peer("viewer")


def test_peer_host_matching_handles_mapped_ipv4() -> None:
    config = parse_config({"peers": [{"name": "p", "ae_title": "P", "host": "127.0.0.1", "port": 1, "verify_host": True}]})
    peer = config.peer("p")
    assert peer.host_matches("127.0.0.1")
    assert peer.host_matches("::ffff:127.0.0.1")
    assert not peer.host_matches("127.0.0.2")


def test_listener_process_count(make_config) -> None:
    node = make_config().node
    assert [node.worker_count(cpus) for cpus in (None, 1, 2, 3, 16)] == [2, 2, 4, 6, 8]
    assert make_config(node={"workers": 1}).node.worker_count(16) == 1


def test_deidentified_targets_name_a_profile_and_need_the_site_key(tmp_path: Path, make_config) -> None:
    import os

    import yaml

    from dicom_node.cli import main

    peers = [{"name": "extai", "ae_title": "EXTAI", "host": "127.0.0.1", "port": 104},
             {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 105}]
    route = {"name": "out", "forward": [{"peer": "extai", "deidentify": "research"}], "destinations": ["pacs"]}
    key = tmp_path / "site.key"
    key.write_bytes(os.urandom(32))
    deid = {"key_file": str(key), "profiles": {"research": {"options": ["clean_descriptors"]}}}
    config = make_config(peers=peers, routes=[route], deidentification=deid)
    assert config.routes[0].profile_for("extai", "forward") == "research"
    assert config.routes[0].forward_peers == ["extai"] and config.routes[0].plain_destinations == ["pacs"]
    with pytest.raises(ConfigError, match="no de-identification profile named 'other'"):
        make_config(peers=peers, routes=[{**route, "forward": [{"peer": "extai", "deidentify": "other"}]}],
                    deidentification=deid)
    with pytest.raises(ConfigError, match="deidentification.key_file is not set"):
        make_config(peers=peers, routes=[route], deidentification={"profiles": deid["profiles"]})
    with pytest.raises(ConfigError, match="does not alter pixel data"):
        make_config(deidentification={"profiles": {"p": {"options": ["clean_pixel_data"]}}})
    with pytest.raises(ConfigError, match="named twice"):
        make_config(peers=peers, routes=[{**route, "forward": ["extai", {"peer": "extai", "deidentify": "research"}]}],
                    deidentification=deid)
    with pytest.raises(ConfigError, match="private groups are odd"):
        make_config(deidentification={"profiles": {"p": {"safe_private": [{"group": "0010", "creator": "X", "element": "10"}]}}})

    # serve refuses to start with a key too short to be a secret, before it listens.
    key.write_bytes(b"password")
    from ..conftest import config_dict

    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(config_dict(tmp_path, peers=peers, routes=[route], deidentification=deid)))
    assert main(["--config", str(path), "serve"]) == 2


def test_kept_cases_need_a_known_profile_and_the_site_key(tmp_path: Path) -> None:
    from ..conftest import config_dict

    with pytest.raises(ConfigError, match="monitoring.cases_deidentify: no de-identification profile named 'nope'"):
        parse_config(config_dict(tmp_path, monitoring={"cases_deidentify": "nope"}), "test")
    with pytest.raises(ConfigError, match="deidentification.key_file is not"):
        parse_config(config_dict(tmp_path, monitoring={"cases_deidentify": "training"},
                                 deidentification={"profiles": {"training": {"options": []}}}), "test")
