"""Shared fixtures. Everything encrypted runs at the explicitly insecure ``test`` preset."""
from __future__ import annotations

import warnings

import pytest

from ckksnet.backend import CkksClient
from ckksnet.core.preset import InsecurePresetWarning


def make_client() -> CkksClient:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePresetWarning)
        return CkksClient("test")


@pytest.fixture(scope="session")
def client() -> CkksClient:
    """A test-preset client with rotation keys for 1, 2, 5, -1 and bootstrapping keys."""
    c = make_client()
    c.gen_bootstrap_keys()
    c.gen_rotation_keys([1, 2, 5, -1])
    return c


@pytest.fixture(scope="session")
def server(client):
    return client.server()
