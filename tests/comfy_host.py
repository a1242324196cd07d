"""Start and drive a real ComfyUI server for integration tests (stdlib only).

The ComfyUI folder comes from ``scripts/setup_comfyui.sh`` (default ``<repo>/.comfyui/ComfyUI``).
``IDEOGRAM4_COMFYUI_DIR`` names any other ComfyUI work tree (e.g. a 0.33 checkout); run pytest
with a Python whose environment has that ComfyUI's requirements, since the server runs with
``sys.executable`` (docs/comfyui-host.md, "Another ComfyUI"). Such a tree is never written to: its
bytecode goes to ``<repo>/.comfyui/pycache``. Each ``ComfyHost`` gets its own temporary
``--base-directory`` holding ``custom_nodes/`` (with this repo linked in), ``models/<folder>/``,
``input/``, ``output/``, ``temp/`` and ``user/``, so tests can drop tiny model files into
``host.models_dir / "diffusion_models"`` etc. before (or, for most folders, after) the start:
ComfyUI rescans model folders when a loader's list is requested.

    host = ComfyHost().start()
    pid = host.post_prompt({"1": {"class_type": "EmptyImage", "inputs": {...}}, ...})
    entry = host.wait_for(pid, timeout=60)      # the /history entry
    host.stop()

Every host is stopped at interpreter exit as well.
"""
from __future__ import annotations

import atexit
import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import weakref
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACK_NAME = "comfyui-ideogram4"  # folder name under custom_nodes/ (and python_module suffix)

# The model folders ComfyUI 0.3.75 knows under <base>/models (folder_paths.py).
MODEL_FOLDERS = (
    "checkpoints", "clip", "clip_vision", "configs", "controlnet", "diffusers", "diffusion_models",
    "embeddings", "gligen", "hypernetworks", "loras", "model_patches", "text_encoders", "unet",
    "upscale_models", "vae", "vae_approx",
)


def comfyui_dir() -> Path:
    """Where the ComfyUI source tree is (it may not exist)."""
    env = os.environ.get("IDEOGRAM4_COMFYUI_DIR")
    return Path(env).resolve() if env else REPO / ".comfyui" / "ComfyUI"


def comfyui_available() -> bool:
    return (comfyui_dir() / "main.py").is_file()


def tree_env(comfy_dir: Path | None = None) -> dict:
    """Environment for a Python process that runs in a ComfyUI tree: another work tree
    (IDEOGRAM4_COMFYUI_DIR, maybe shared) is never written to, so its bytecode goes elsewhere."""
    tree = (comfy_dir or comfyui_dir()).resolve()
    return {} if tree.is_relative_to(REPO) else {"PYTHONPYCACHEPREFIX": str(REPO / ".comfyui" / "pycache")}


def comfyui_version(comfy_dir: Path | None = None) -> str:
    """The version the tree declares (``comfyui_version.py``), e.g. "0.3.75" or "0.33.0"."""
    text = ((comfy_dir or comfyui_dir()) / "comfyui_version.py").read_text()
    return text.split("__version__")[1].split('"')[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyError(RuntimeError):
    """An HTTP error from the server; ``status`` and parsed ``body`` (dict or text)."""

    def __init__(self, status: int, body, url: str):
        super().__init__(f"HTTP {status} from {url}: {str(body)[:2000]}")
        self.status = status
        self.body = body


class ServerDied(RuntimeError):
    pass


_LIVE: "weakref.WeakSet[ComfyHost]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for host in list(_LIVE):
        host.stop()


class ComfyHost:
    """One ComfyUI server process with its own temporary base directory.

    Args:
        comfy_dir: the ComfyUI source tree (default: ``comfyui_dir()``).
        base_dir: use this base directory instead of a new temporary one (kept at stop).
        link_pack: link this repo into ``custom_nodes/`` (default True).
        extra_args: more ComfyUI command-line flags, e.g. ``["--preview-method", "latent2rgb"]``,
            ``["--lowvram"]`` or ``["--front-end-root", path]``.
        env: extra environment variables for the server.
        keep_dir: keep a temporary base directory at stop (for artifacts / post-mortem).
    """

    def __init__(self, comfy_dir=None, base_dir=None, link_pack: bool = True,
                 extra_args=(), env=None, keep_dir: bool = False, python: str | None = None):
        self.comfy_dir = Path(comfy_dir) if comfy_dir else comfyui_dir()
        if not (self.comfy_dir / "main.py").is_file():
            raise FileNotFoundError(
                f"no ComfyUI at {self.comfy_dir}; run scripts/setup_comfyui.sh "
                "(or set IDEOGRAM4_COMFYUI_DIR)")
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir) if base_dir else Path(tempfile.mkdtemp(prefix="comfyhost-"))
        self.keep_dir = keep_dir
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.python = python or sys.executable
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.boot_seconds: float | None = None
        self.client_id = uuid.uuid4().hex
        self._log_file = None
        for sub in ("custom_nodes", "input", "output", "temp", "user"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        for sub in MODEL_FOLDERS:
            (self.models_dir / sub).mkdir(parents=True, exist_ok=True)
        if link_pack:
            link = self.base_dir / "custom_nodes" / PACK_NAME
            if not link.exists():
                link.symlink_to(REPO, target_is_directory=True)

    # -- layout ---------------------------------------------------------------------------

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "comfyui.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle ------------------------------------------------------------------------

    def command(self) -> list[str]:
        return [
            self.python, "main.py",
            "--cpu",
            "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base_dir),
            # in-memory DB: no comfyui.db written into the shared ComfyUI tree
            "--database-url", "sqlite:///:memory:",
            # no comfy_api_nodes (paid cloud nodes): faster boot, no outbound calls
            "--disable-api-nodes",
            "--disable-auto-launch",
            "--log-stdout",
            *self.extra_args,
        ]

    def start(self, timeout: float = 600.0) -> "ComfyHost":  # a hang guard, not a speed limit
        if self.proc is not None:
            return self
        env = dict(os.environ)
        env.update({
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "DO_NOT_TRACK": "1",
            "TQDM_DISABLE": "1",
        })
        env.update(tree_env(self.comfy_dir))
        env.update(self.extra_env)
        last_error = None
        for _attempt in range(3):  # a free port can be taken between probe and bind
            self.port = free_port()
            self._log_file = open(self.log_path, "ab")
            t0 = time.monotonic()
            self.proc = subprocess.Popen(
                self.command(), cwd=self.comfy_dir, env=env, stdin=subprocess.DEVNULL,
                stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True)
            _LIVE.add(self)
            try:
                self._wait_ready(t0 + timeout)
                self.boot_seconds = time.monotonic() - t0
                return self
            except ServerDied as e:
                last_error = e
                self._reap()
                if "address already in use" not in self.log.lower():
                    raise
        raise last_error  # type: ignore[misc]

    def _wait_ready(self, deadline: float) -> None:
        while True:
            if self.proc.poll() is not None:
                raise ServerDied(f"ComfyUI exited with {self.proc.returncode} during boot:\n"
                                 + self.log_tail())
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, socket.timeout, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("ComfyUI did not answer in time:\n" + self.log_tail())
            time.sleep(0.2)

    def _reap(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self) -> None:
        """Stop the server (SIGTERM to its process group, then SIGKILL) and clean up."""
        self._reap()
        _LIVE.discard(self)
        if self._own_dir and not self.keep_dir and self.base_dir.exists():
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> "ComfyHost":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- log --------------------------------------------------------------------------------

    @property
    def log(self) -> str:
        """Everything the server printed so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.splitlines()[-n:])

    def import_failures(self) -> list[str]:
        """Log lines where ComfyUI reports a custom node (or extra node) that failed to import."""
        return [l for l in self.log.splitlines()
                if "IMPORT FAILED" in l or "Cannot import" in l
                or "Error while calling comfy_entrypoint" in l]

    def pack_import_failures(self) -> list[str]:
        return [l for l in self.import_failures() if PACK_NAME in l]

    def pack_loaded(self) -> bool:
        """True when ComfyUI listed the pack among its custom nodes without "IMPORT FAILED"."""
        return any(l.rstrip().endswith(f"custom_nodes/{PACK_NAME}") and "IMPORT FAILED" not in l
                   and "seconds" in l for l in self.log.splitlines())

    # -- HTTP -------------------------------------------------------------------------------

    def _check(self) -> None:
        if not self.alive():
            raise ServerDied("ComfyUI is not running:\n" + self.log_tail())

    def request(self, method: str, path: str, body=None, timeout: float = 60.0):
        """(status, parsed body); JSON bodies are parsed, others returned as bytes."""
        self._check()
        data = None
        headers = {}
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, raw, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            status, raw, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
        if "json" in ctype:
            try:
                return status, json.loads(raw)
            except ValueError:
                pass
        return status, raw

    def get(self, path: str, timeout: float = 60.0):
        """GET; returns parsed JSON (or bytes); raises ComfyError on HTTP >= 400."""
        status, body = self.request("GET", path, timeout=timeout)
        if status >= 400:
            raise ComfyError(status, body, path)
        return body

    def post(self, path: str, body=None, timeout: float = 60.0):
        status, out = self.request("POST", path, body if body is not None else {}, timeout=timeout)
        if status >= 400:
            raise ComfyError(status, out, path)
        return out

    def object_info(self, node_class: str | None = None) -> dict:
        if node_class:
            return self.get("/object_info/" + urllib.parse.quote(node_class)).get(node_class, {})
        return self.get("/object_info")

    def pack_nodes(self) -> dict:
        """The /object_info entries registered by this pack (by python_module)."""
        return {k: v for k, v in self.object_info().items()
                if str(v.get("python_module", "")).endswith(PACK_NAME)}

    def post_prompt_raw(self, prompt: dict, extra_data: dict | None = None, **fields):
        """POST /prompt without raising: (status, body). A refused prompt gives 400 with
        ``{"error": {...}, "node_errors": {...}}``."""
        body = {"prompt": prompt, "client_id": self.client_id, **fields}
        if extra_data:
            body["extra_data"] = extra_data
        return self.request("POST", "/prompt", body)

    def post_prompt(self, prompt: dict, extra_data: dict | None = None, **fields) -> str:
        """Queue an API-format prompt; returns its prompt_id. Raises ComfyError if refused."""
        status, body = self.post_prompt_raw(prompt, extra_data, **fields)
        if status != 200 or not isinstance(body, dict) or "prompt_id" not in body:
            raise ComfyError(status, body, "/prompt")
        return body["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        return self.get("/history/" + urllib.parse.quote(prompt_id)).get(prompt_id)

    def wait_for(self, prompt_id: str, timeout: float = 120.0, poll: float = 0.1) -> dict:
        """Block until the prompt has finished (success, error or interrupt); returns its
        /history entry (keys ``outputs``, ``status`` with ``status_str`` and ``messages``)."""
        deadline = time.monotonic() + timeout
        while True:
            entry = self.history(prompt_id)
            if entry is not None and entry.get("status", {}).get("completed") is not None:
                return entry
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} not finished after {timeout} s:\n"
                                   + self.log_tail())
            time.sleep(poll)

    def run(self, prompt: dict, timeout: float = 120.0) -> dict:
        """post_prompt + wait_for; raises if the run did not succeed."""
        entry = self.wait_for(self.post_prompt(prompt), timeout)
        if entry["status"].get("status_str") != "success":
            raise AssertionError("prompt failed: " + json.dumps(entry["status"], indent=1)[:4000])
        return entry

    def interrupt(self, prompt_id: str | None = None) -> None:
        """POST /interrupt (global, or only if ``prompt_id`` is the running one)."""
        self.post("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def queue(self) -> dict:
        return self.get("/queue")

    def clear_queue(self) -> None:
        self.post("/queue", {"clear": True})

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        self.post("/free", {"unload_models": unload_models, "free_memory": free_memory})

    def output_files(self, entry: dict) -> list[Path]:
        """Files named in a history entry's outputs (images, gifs, audio...) that are in output/."""
        files = []
        for node_out in entry.get("outputs", {}).values():
            for items in node_out.values():
                if not isinstance(items, list):
                    continue
                for it in items:
                    if isinstance(it, dict) and "filename" in it and it.get("type") == "output":
                        files.append(self.output_dir / it.get("subfolder", "") / it["filename"])
        return files

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux /proc)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    # -- websocket --------------------------------------------------------------------------

    def websocket(self, timeout: float = 30.0) -> "WebSocket":
        """Open /ws with this host's client_id: progress, executing, executed, and binary
        preview frames for prompts posted through this host."""
        self._check()
        return WebSocket("127.0.0.1", self.port, f"/ws?clientId={self.client_id}", timeout)


class WebSocket:
    """Minimal RFC 6455 client, enough to read ComfyUI's /ws messages.

    ``recv()`` returns ``("json", dict)`` for text frames and ``("binary", (event_type, bytes))``
    for binary frames (ComfyUI prefixes a big-endian uint32 event type; previews are type 1 and
    their bytes begin with a uint32 image format, then the JPEG/PNG data).
    """

    def __init__(self, host: str, port: int, path: str, timeout: float):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("websocket handshake: connection closed")
            head += chunk
        head, self._buf = head.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError("websocket handshake failed: " + head.decode(errors="replace"))

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("websocket closed")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _send(self, opcode: int, payload: bytes = b"") -> None:
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def recv(self, timeout: float | None = None):
        if timeout is not None:
            self.sock.settimeout(timeout)
        message, kind = b"", None
        while True:
            b0, b1 = self._read(2)
            opcode, fin = b0 & 0x0F, b0 & 0x80
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x8:
                raise ConnectionError("websocket closed by server")
            if opcode == 0x9:
                self._send(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            if opcode in (0x1, 0x2):
                kind = opcode
            message += payload
            if fin:
                break
        if kind == 0x1:
            return "json", json.loads(message)
        return "binary", (struct.unpack(">I", message[:4])[0], message[4:])

    def messages(self, until_prompt_done: str | None = None, timeout: float = 120.0):
        """Yield messages; stop after ``executing`` with node None for ``until_prompt_done``
        (or after an execution_error / execution_interrupted for it)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no end of prompt on the websocket")
            kind, msg = self.recv(timeout=left)
            yield kind, msg
            if until_prompt_done and kind == "json":
                data = msg.get("data", {})
                if data.get("prompt_id") == until_prompt_done and (
                        (msg.get("type") == "executing" and data.get("node") is None)
                        or msg.get("type") in ("execution_error", "execution_interrupted")):
                    return

    def close(self) -> None:
        try:
            self._send(0x8, struct.pack(">H", 1000))
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> "WebSocket":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def require_comfyui() -> None:
    if comfyui_available():
        return
    reason = (f"no ComfyUI at {comfyui_dir()}: run `bash scripts/setup_comfyui.sh` "
              "(or set IDEOGRAM4_COMFYUI_DIR)")
    if _truthy("CI") or _truthy("IDEOGRAM4_REQUIRE_COMFYUI"):
        _pytest().fail(reason + " — required under CI", pytrace=False)
    _pytest().skip(reason)


def _pytest():
    import pytest  # only the tests need it; the helper itself is stdlib-only

    return pytest
