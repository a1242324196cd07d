"""Submit the Ideogram 4 API workflow to a ComfyUI server, wait, and save the image(s). Stdlib only.

    python scripts/submit_api_workflow.py --caption @caption.json --seed 7 --preset "Turbo 12" \\
        --width 1536 --height 1024 --out images/

Without --caption the workflow's own caption is used (in the bundled workflow, the one its Caption
Builder builds). --caption goes straight into Text Encode, byte for byte, replacing a link into it;
a node left feeding nothing (the builder) is dropped. Nodes are found by type, so a workflow saved
with "Export (API)" from the UI works too (--workflow).

Exit codes: 0 saved, 2 bad arguments, 3 server unreachable, 4 prompt refused (node_errors),
5 execution failed or interrupted, 6 timed out, 7 finished without images.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

DEFAULT_WORKFLOW = Path(__file__).resolve().parent.parent / "api_workflows" / "image_ideogram4_t2i_api.json"
PRESETS = ["Quality 48", "Default 20", "Turbo 12"]
CUSTOM_SIZE = "custom (width x height below)"


class Failure(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def http(server: str, path: str, body=None, timeout: float = 30.0):
    """(status, body): JSON parsed when it is JSON, else bytes. Raises Failure(3) if unreachable."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(server.rstrip("/") + path, data=data,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        raise Failure(3, f"cannot reach ComfyUI at {server}: {getattr(e, 'reason', e)}. "
                         "Is the server running, and is --server right?") from None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def nodes_of(prompt: dict, class_type: str) -> list[dict]:
    return [n for n in prompt.values() if n.get("class_type") == class_type]


def set_input(prompt: dict, class_type: str, name: str, value, replace_link: bool = False) -> None:
    found = nodes_of(prompt, class_type)
    if not found:
        raise Failure(2, f"the workflow has no {class_type} node to set {name} on")
    for node in found:
        if isinstance(node["inputs"].get(name), list) and not replace_link:
            raise Failure(2, f"{class_type}.{name} is linked to another node in this workflow; edit it there")
        node["inputs"][name] = value


def drop_unused(prompt: dict, candidates: set[str]) -> None:
    """Remove the candidate nodes (and, in turn, their sources) that no longer feed any node."""
    while candidates:
        used = {v[0] for n in prompt.values() for v in n["inputs"].values() if isinstance(v, list)}
        unused = {c for c in candidates if c in prompt and c not in used}
        candidates = {v[0] for c in unused for v in prompt.pop(c)["inputs"].values() if isinstance(v, list)}


def apply_options(prompt: dict, args) -> dict:
    if args.caption is not None:
        caption = args.caption
        if caption.startswith("@"):
            try:
                caption = Path(caption[1:]).read_text(encoding="utf-8")
            except OSError as e:
                raise Failure(2, f"cannot read the caption file: {e}") from None
        sources = {v[0] for n in nodes_of(prompt, "Ideogram4TextEncode")
                   if isinstance(v := n["inputs"].get("caption"), list)}
        set_input(prompt, "Ideogram4TextEncode", "caption", caption, replace_link=True)
        drop_unused(prompt, sources)
    if args.seed is not None:
        set_input(prompt, "Ideogram4Sampler", "seed", args.seed)
    if args.preset:
        set_input(prompt, "Ideogram4Sampler", "preset", args.preset)
    if (args.width is None) != (args.height is None):
        raise Failure(2, "give --width and --height together")
    if args.width is not None:
        set_input(prompt, "Ideogram4EmptyLatent", "size_preset", CUSTOM_SIZE)
        set_input(prompt, "Ideogram4EmptyLatent", "width", args.width)
        set_input(prompt, "Ideogram4EmptyLatent", "height", args.height)
    for value, class_type, name in ((args.model, "Ideogram4ModelLoader", "model_name"),
                                    (args.unconditional_model, "Ideogram4ModelLoader", "unconditional_model_name"),
                                    (args.text_encoder, "Ideogram4TextEncoderLoader", "text_encoder_name"),
                                    (args.vae, "VAELoader", "vae_name")):
        if value is not None:
            set_input(prompt, class_type, name, value)
    return prompt


def describe_refusal(body) -> str:
    if not isinstance(body, dict):
        return str(body)[:2000]
    err = body.get("error", {})
    lines = [f"{err.get('message', 'refused')}: {err.get('details', '')}".rstrip(": ")]
    for node_id, node in (body.get("node_errors") or {}).items():
        for e in node.get("errors", []):
            name = e.get("extra_info", {}).get("input_name", "")
            lines.append(f"  node {node_id} ({node.get('class_type')}) {name}: {e.get('message')}: {e.get('details')}")
    return "\n".join(lines)


def queue_prompt(server: str, prompt: dict) -> str:
    status, body = http(server, "/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
    if status != 200 or not isinstance(body, dict) or "prompt_id" not in body:
        raise Failure(4, f"ComfyUI refused the workflow (HTTP {status}):\n{describe_refusal(body)}")
    return body["prompt_id"]


def wait_for(server: str, prompt_id: str, timeout: float, poll: float = 0.5) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, history = http(server, "/history/" + prompt_id)
        entry = history.get(prompt_id) if isinstance(history, dict) else None
        if entry and entry.get("status", {}).get("completed") is not None:
            return entry
        time.sleep(poll)
    raise Failure(6, f"prompt {prompt_id} did not finish within {timeout:g} s (still queued or running; "
                     "raise --timeout, or POST /interrupt to stop it)")


def check_success(entry: dict) -> None:
    status = entry.get("status", {})
    if status.get("status_str") == "success":
        return
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            raise Failure(5, f"execution failed in node {data.get('node_id')} ({data.get('node_type')}): "
                             f"{data.get('exception_type')}: {data.get('exception_message', '').strip()}")
        if kind == "execution_interrupted":
            raise Failure(5, f"execution was interrupted at node {data.get('node_id')} ({data.get('node_type')})")
    raise Failure(5, f"execution failed: {json.dumps(status)[:2000]}")


def save_images(server: str, entry: dict, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = []
    for node_out in entry.get("outputs", {}).values():
        for image in node_out.get("images", []):
            query = urllib.parse.urlencode({k: image.get(k, "") for k in ("filename", "subfolder", "type")})
            status, data = http(server, "/view?" + query, timeout=120)
            if status != 200 or not isinstance(data, bytes):
                raise Failure(7, f"could not download {image.get('filename')} (HTTP {status})")
            path = out_dir / Path(image["filename"]).name
            path.write_bytes(data)
            saved.append(path)
    if not saved:
        raise Failure(7, "the prompt finished but produced no images")
    return saved


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default="http://127.0.0.1:8188")
    p.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW, help="an API-format workflow")
    p.add_argument("--caption", help="caption text, or @file to read it from a file")
    p.add_argument("--seed", type=int)
    p.add_argument("--width", type=int, help="with --height: a custom size (256-2048, multiples of 16)")
    p.add_argument("--height", type=int)
    p.add_argument("--preset", choices=PRESETS)
    p.add_argument("--model", help="model_name: file or folder in models/diffusion_models")
    p.add_argument("--unconditional-model", help="unconditional_model_name")
    p.add_argument("--text-encoder", help="text_encoder_name: file or folder in models/text_encoders")
    p.add_argument("--vae", help="vae_name: file in models/vae")
    p.add_argument("--out", type=Path, default=Path("."), help="folder for the images (default: .)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the result")
    p.add_argument("--dry-run", action="store_true", help="print the prompt JSON instead of submitting it")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        try:
            prompt = json.loads(args.workflow.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise Failure(2, f"cannot read the workflow {args.workflow}: {e}") from None
        apply_options(prompt, args)
        if args.dry_run:
            print(json.dumps(prompt, indent=2))
            return 0
        prompt_id = queue_prompt(args.server, prompt)
        print(f"queued {prompt_id} on {args.server}; waiting...", flush=True)
        started = time.monotonic()
        entry = wait_for(args.server, prompt_id, args.timeout)
        check_success(entry)
        for path in save_images(args.server, entry, args.out):
            print(f"saved {path}")
        print(f"done in {time.monotonic() - started:.1f} s")
        return 0
    except Failure as f:
        print(f"error: {f}", file=sys.stderr)
        return f.code


if __name__ == "__main__":
    sys.exit(main())
