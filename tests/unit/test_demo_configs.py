"""The embedded configuration on the Rust example relay (`bench soak --relay rust`): each
service's releases run the given binary, forwarding the header byte the service's canary
and clients use, and the files load as any operator's would."""

from __future__ import annotations

import os
from pathlib import Path

from swapctl.config import service_domain_byte
from swapctl.config.load import load_config
from swapctl.demo import configs


def test_the_rust_relay_forwards_each_services_own_domain_byte(tmp_path: Path) -> None:
    binary = tmp_path / "swapctl-example-relay"
    binary.write_text("#!/bin/sh\n")
    os.chmod(binary, 0o755)
    config = load_config(configs.write(tmp_path, rust_relay=binary))
    bytes_seen = set()
    for name, service in config.services.items():
        byte = service_domain_byte(service)
        bytes_seen.add(byte)
        for release in ("v1", "v2"):
            assert list(service.releases[release].command) == [
                str(binary), "--domain-byte", str(byte)], (name, release)
            assert service.releases[release].handoff
    assert len(bytes_seen) == len(configs.SERVICES)  # three services, three domains


def test_without_a_rust_relay_the_services_run_the_reference_relay(tmp_path: Path) -> None:
    config = load_config(configs.write(tmp_path))
    for name, service in config.services.items():
        command = list(service.releases["v1"].command)
        assert command[1:4] == ["-P", "-m", "swapctl.relay"] and name in command
