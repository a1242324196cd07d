"""scripts/benchmark_lora.py in its tiny CPU mode: the report has its structure for each weight kind.
No assertion looks at a timing: CPU timings in CI are noise."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_lora.py"


def test_tiny_cpu_report_structure(tmp_path):
    spec = importlib.util.spec_from_file_location("benchmark_lora", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.main(["--tiny", "--repeats", "1", "--warmup", "0", "--text-tokens", "16",
                          "--json", str(tmp_path / "lora.json")])
    assert report["device"] == "cpu" and report["dtype"] == "float32"
    assert [k["kind"] for k in report["kinds"]] == ["float", "fp8", "nf4"]
    for kind in report["kinds"]:
        assert kind["patched_layers"] == 6 * report["layers"]
        assert kind["step_s_with"] > 0 and kind["step_s_without"] > 0 and kind["lora_mib"] > 0
        assert (kind["merge_s"] > 0) == (kind["kind"] == "float")
