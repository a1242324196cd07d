"""scripts/benchmark.py in its tiny CPU mode: the report has its structure, and our velocities equal
diffusers' on the same weights before anything is timed (a mismatch stops the run). No assertion
looks at a timing: CPU timings in CI are noise."""

import importlib.util
import json
from pathlib import Path

import pytest

from ideogram4_core.model.transformer import Ideogram4Config

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
IMPLS = ["ours", "diffusers-default", "diffusers-tuned"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_cpu_report_structure_and_equal_velocities(bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    report = bench.main(["--tiny", "--repeats", "2", "--warmup", "0", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["device"] == "cpu" and report["dtype"] == "float32" and report["peak_bf16_tflops"] is None
    assert report["cpu_peak_rss_gib"] > 0
    (case,) = report["cases"]
    assert (case["size"], case["text_tokens"], case["image_tokens"]) == ("256x256", 300, 256)

    assert [c["impl"] for c in case["checks"]] == IMPLS[1:]
    for check in case["checks"]:
        assert check["ok"] and check["max_rel_error"] <= check["tolerance"] == 1e-4

    results = {r["impl"]: r for r in case["results"]}
    assert list(results) == IMPLS
    for r in results.values():
        assert len(r["times_s"]) == 2 and r["median_s"] > 0 and r["useful_tflops"] > 0
        assert r["peak_fraction"] is None and r["peak_gib"] is None and r["weights_gib"] > 0
        assert set(r["speedup_vs"]) == set(IMPLS)
    assert results["ours"]["speedup_vs"]["ours"] == 1.0
    # Executed work: ours = the useful count less the caption projection (once per run) and the last
    # block's caption rows; diffusers adds padding and zero-row projections.
    executed = {name: r["executed_tflop"] for name, r in results.items()}
    cfg = bench.MODELS["tiny"]
    skipped = 2 * 300 * cfg.llm_features_dim * cfg.hidden_size + 2 * 300 * cfg.hidden_size * (
        cfg.hidden_size + 3 * cfg.intermediate_size)
    assert executed["ours"] == pytest.approx(case["useful_tflop"] - skipped / 1e12)
    assert executed["diffusers-default"] > executed["diffusers-tuned"] > executed["ours"]

    printed = capsys.readouterr().out
    assert "| impl | step (s) |" in printed and "diffusers-tuned" in printed


def test_wrong_velocities_stop_the_run_before_timing(bench, monkeypatch):
    class Wrong(bench.GuidedVelocity):
        def conditional(self, latents, t):
            return super().conditional(latents, t) * 1.001

    monkeypatch.setattr(bench, "GuidedVelocity", Wrong)
    monkeypatch.setattr(bench, "time_step", lambda *a: pytest.fail("timed a step of wrong code"))
    with pytest.raises(SystemExit, match="velocities differ"):
        bench.main(["--tiny", "--repeats", "1", "--warmup", "0", "--text-tokens", "8"])


def test_quantised_ours_runs_and_reports_its_error(bench):
    pytest.importorskip("ideogram4_core.model.quant")
    report = bench.main(["--tiny", "--quant", "fp8", "--no-diffusers", "--repeats", "1", "--warmup", "0",
                         "--text-tokens", "8"])
    (case,) = report["cases"]
    (check,) = case["checks"]
    assert check["impl"] == "ours-fp8" and check["tolerance"] is None  # quantisation error: informative
    assert 0 < check["max_rel_error"] < 0.5
    fp8 = next(r for r in case["results"] if r["impl"] == "ours-fp8")
    ours = next(r for r in case["results"] if r["impl"] == "ours")
    assert fp8["weights_gib"] < ours["weights_gib"] / 2


def test_flop_count_of_the_released_model_at_1024_with_300_tokens(bench):
    """Spec §J / DESIGN §6: about 170 TFLOP a step; the text projection is 2 * 53248 * 4608 a row."""
    cfg = Ideogram4Config()
    step = bench.step_flops(cfg, 300, 4096)
    assert 165e12 < step < 175e12
    text_part = bench.pass_flops(cfg, 4396, 300) - bench.pass_flops(cfg, 4396, 0)
    assert text_part == 300 * 2 * 53248 * 4608
    assert text_part / step < 0.001


def test_comfyui_core_step_checked_against_ours(tmp_path):
    """--comfyui: ComfyUI core's native Ideogram 4 model (0.33+) on our weights gives our velocities
    before anything is timed (fp32: the same numbers, within 1e-4). Its own process, as ComfyUI is
    imported there. Skipped on a host without core's Ideogram 4 (CI's 0.3.75)."""
    import subprocess
    import sys

    from comfy_host import comfyui_dir

    tree = comfyui_dir()
    if not (tree / "comfy" / "ldm" / "ideogram4" / "model.py").is_file():
        pytest.skip(f"{tree} has no ComfyUI core Ideogram 4 (needs 0.33+; set IDEOGRAM4_COMFYUI_DIR)")
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--repeats", "1", "--warmup", "0", "--no-diffusers",
                    "--comfyui", str(tree), "--json", str(out)], check=True, capture_output=True, timeout=600)
    report = json.loads(out.read_text())
    (case,) = report["cases"]
    (check,) = case["checks"]
    assert check["impl"] == "comfyui-core" and check["ok"] and check["max_rel_error"] <= check["tolerance"] == 1e-4
    assert report["comfyui"] and {r["impl"] for r in case["results"]} == {"ours", "comfyui-core"}
