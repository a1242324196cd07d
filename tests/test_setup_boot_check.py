"""The setup script's boot verdict (scripts/setup_comfyui.py `boot_problems`) on ComfyUI's own log
lines (format of 0.3.75's nodes.py: "Cannot import <path> module for custom nodes: <error>", the
"Import times for custom nodes:" list, "IMPORT FAILED: <file>" for comfy_extras).

The case that fooled the old check: the clone is named like the pack, so core's own failures name
a path containing "comfyui-ideogram4" while the pack itself imported fine. The end-to-end proof is
tests/test_quick_start.py; these cases pin each rule down without a 7 GB environment.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("setup_comfyui", REPO / "scripts" / "setup_comfyui.py")
setup = importlib.util.module_from_spec(spec)
spec.loader.exec_module(setup)

COMFY = Path("/home/u/comfyui-ideogram4/.comfyui/ComfyUI")  # a clone named as the README says
PACK = Path("/tmp/comfy-boot-x/custom_nodes/comfyui-ideogram4")
NEEDED = setup.workflow_node_types() | set(setup.COMPLETE_HOST_NODES)
INFO = {name: {"python_module": "nodes"} for name in NEEDED}
INFO.update({name: {"python_module": "custom_nodes.comfyui-ideogram4"} for name in NEEDED if name.startswith("Ideogram4")})
CORE_FAILURES = [
    f"Cannot import {COMFY}/comfy_extras/nodes_upscale_model.py module for custom nodes: No module named 'spandrel'",
    f"Cannot import {COMFY}/comfy_extras/nodes_audio.py module for custom nodes: No module named 'torchaudio'",
    f"Cannot import {COMFY}/comfy_extras/nodes_audio_encoder.py module for custom nodes: No module named 'torchaudio'",
    "IMPORT FAILED: nodes_upscale_model.py", "IMPORT FAILED: nodes_audio.py", "IMPORT FAILED: nodes_audio_encoder.py",
]


def log(*lines: str, pack_line: str = f"   2.8 seconds: {PACK}") -> str:
    return "\n".join(["Total VRAM 24105 MB", *lines, "Import times for custom nodes:", pack_line,
                      "Starting server", "To see the GUI go to: http://127.0.0.1:8188"])


def test_clean_boot_passes():
    assert setup.boot_problems(log(), INFO, COMFY, PACK, ci_minimal=False) == []


def test_core_failures_under_a_clone_named_like_the_pack_fail_a_complete_host_but_never_blame_the_pack():
    problems = setup.boot_problems(log(*CORE_FAILURES), INFO, COMFY, PACK, ci_minimal=False)
    assert len(problems) == len(CORE_FAILURES) and all(p.startswith("failed import:") for p in problems)
    assert not [p for p in problems if "pack" in p]
    # the CI-only host accepts exactly these three core modules
    assert setup.boot_problems(log(*CORE_FAILURES), INFO, COMFY, PACK, ci_minimal=True) == []


def test_a_failed_pack_import_is_caught_even_on_the_ci_host():
    failed = f"   0.3 seconds (IMPORT FAILED): {PACK}"
    problems = setup.boot_problems(log(f"Cannot import {PACK} module for custom nodes: boom", pack_line=failed),
                                   {}, COMFY, PACK, ci_minimal=True)
    assert any("failed import" in p and str(PACK) in p for p in problems)
    assert any("not listed as imported" in p for p in problems)
    assert any("no node from the pack" in p for p in problems)


def test_another_core_failure_is_not_excused_on_the_ci_host():
    other = f"Cannot import {COMFY}/comfy_extras/nodes_video.py module for custom nodes: No module named 'av'"
    assert setup.boot_problems(log(other), INFO, COMFY, PACK, ci_minimal=True) == [f"failed import: {other}"]


def test_missing_nodes_are_named():
    info = {k: v for k, v in INFO.items() if k not in ("LoadAudio", "Ideogram4Sampler")}
    (problem,) = setup.boot_problems(log(), info, COMFY, PACK, ci_minimal=False)
    assert problem == "/object_info lacks nodes: Ideogram4Sampler, LoadAudio"
