"""A ``ray://`` address (Ray Client) without Ray Client's gRPC installed fails with a
message that names the address and says what to install: the pinned ``ray`` is core
only. No cluster starts here (the check comes before any connection)."""

from __future__ import annotations

import sys

import pytest

import onceflow as of


def _flow() -> of.Flow:
    flow = of.Flow("ray-client", parallelism=1)
    flow.source(of.sources.Range(0, 3), name="numbers").sink(of.sinks.Discard(), name="out")
    return flow


def test_a_ray_address_without_ray_client_names_what_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "grpc", None)  # what a core-only Ray has: no grpc
    address = "ray://head.example:10001"
    with pytest.raises(of.ConfigurationError) as err:
        _flow().run(executor=of.executors.Ray(address=address))
    msg = str(err.value)
    assert address in msg and "Ray Client" in msg
    assert 'pip install "ray[client]==2.60.0"' in msg, msg


def test_this_environment_really_lacks_ray_client() -> None:
    # the premise of the docs' warning (docs/ray.md): the pinned ray is core only here
    import importlib.util

    import ray

    assert ray.__version__ == "2.60.0"
    assert importlib.util.find_spec("grpc") is None
    with pytest.raises(of.ConfigurationError, match=r"ray://127\.0\.0\.1:10001"):
        of.executors.Ray(address="ray://127.0.0.1:10001")._connect()
