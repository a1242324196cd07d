"""Shared fixtures. The real ComfyUI server with tiny Ideogram 4 models is started once per test
session: booting ComfyUI and writing the model files are the slowest parts of the suite.
`IDEOGRAM4_TEST_BNB_CPU_PATH=plain|packed` forces one bitsandbytes NF4 CPU path for the whole run
(see bnb_cpu_paths.py)."""

import os

import pytest

import bnb_cpu_paths
from comfy_host import ComfyHost, require_comfyui


def pytest_configure(config):
    path = os.environ.get(bnb_cpu_paths.ENV_VAR)
    if path:
        try:
            bnb_cpu_paths.force_for_session(path)
        except (ValueError, RuntimeError) as exc:
            raise pytest.UsageError(f"{bnb_cpu_paths.ENV_VAR}={path}: {exc}") from None


@pytest.fixture(params=bnb_cpu_paths.PATHS)
def bnb_cpu_path(request, monkeypatch):
    """Runs the test once per bitsandbytes NF4 CPU path ("plain", "packed"); NF4 layers built in
    the test take that path. "packed" skips on a CPU without AVX512-BF16."""
    if request.param == "packed" and not bnb_cpu_paths.cpu_has_packed_kernel():
        pytest.skip(bnb_cpu_paths.NO_PACKED_KERNEL)
    bnb_cpu_paths.force(monkeypatch, request.param)
    return request.param


@pytest.fixture(scope="session")
def tiny_server(tmp_path_factory):
    """(host, models): a running server whose model folders hold the tiny models of
    `server_models.write_tiny_models`, and those models for building the diffusers oracle."""
    require_comfyui()
    from server_models import write_tiny_models

    host = ComfyHost()
    models = write_tiny_models(host.models_dir, tmp_path_factory.mktemp("oracle"))
    host.start()
    try:
        yield host, models
    finally:
        host.stop()


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium under Playwright (tests/front_end.py), one per test module."""
    from playwright.sync_api import sync_playwright

    from front_end import launch

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()
