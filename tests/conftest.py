"""Session-wide settings: Prefect stays local, quiet and patient with a loaded CI machine, and no test
reaches the network (weights, hubs, anything): a connection to an address outside this machine fails
the test that opened it, even if the code under test would have caught the error."""

import ipaddress
import os
import socket
import tempfile

import pytest

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-tests-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# Prefect logs "Stopping temporary server" at interpreter exit, after pytest has closed its streams
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# hub libraries never look for weights online (the `offline` fixture below also stubs their fetchers)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

_REMOTE_ATTEMPTS: list[str] = []
_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def _own_addresses() -> set[str]:
    try:
        return {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        return set()


_OWN = _own_addresses()


def _is_local(address) -> bool:
    if not isinstance(address, tuple):  # unix sockets
        return True
    host = address[0]
    if host in ("localhost", "") or host in _OWN:
        return True
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:  # a name: resolving it would already be a lookup outside the machine
        return False
    return ip.is_loopback or ip.is_unspecified


def _guard(original):
    def connect(self, address, *args, **kwargs):
        if not _is_local(address):
            _REMOTE_ATTEMPTS.append(repr(address))
            raise OSError(f"tests run offline: a connection to {address!r} was refused")
        return original(self, address, *args, **kwargs)
    return connect


socket.socket.connect = _guard(_connect)
socket.socket.connect_ex = _guard(_connect_ex)


@pytest.fixture(autouse=True)
def _no_network():
    """Fail any test that tried to connect outside this machine (the attempt itself already failed)."""
    start = len(_REMOTE_ATTEMPTS)
    yield
    attempts = _REMOTE_ATTEMPTS[start:]
    assert not attempts, f"this test tried to reach the network: {', '.join(attempts)}"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No machine without internet can fetch hub weights: every function through which timm, smp and torch
    would fetch them raises what the hub raises offline, so no test ever opens a connection."""
    import huggingface_hub
    import huggingface_hub.constants
    import segmentation_models_pytorch.encoders as smp_encoders
    import timm.models._builder as builder
    import torch.hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline_error(*args, **kwargs):
        raise LocalEntryNotFoundError("offline: the requested weights are not in the local cache")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for module, name in ((builder, "load_pretrained"), (builder, "load_state_dict_from_url"),
                         (builder, "download_cached_file"), (smp_encoders, "hf_hub_download"),
                         (huggingface_hub, "hf_hub_download"), (torch.hub, "load_state_dict_from_url")):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, offline_error)
