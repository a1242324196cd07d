"""Shared fixtures. The real ComfyUI server with tiny Ideogram 4 models is started once per test
session: booting ComfyUI and writing the model files are the slowest parts of the suite."""

import pytest

from comfy_host import ComfyHost, require_comfyui


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
