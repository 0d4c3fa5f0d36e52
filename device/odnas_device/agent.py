"""The device agent: a small HTTP server on the phone or board that times ONNX models
for an odnas search, under the search's profile and protocol.

    odnas-device serve                 # on the device (or: odnas device serve)

API (JSON over HTTP; every request carries ``Authorization: Bearer TOKEN``):

- ``GET /v1/info``: the device (its name, CPU, ONNX Runtime version and providers),
  the agent's version and API, its size cap, and whether it is timing now.
- ``POST /v1/measure``: ``{"settings": {"runtime": {...}, "protocol": {...},
  "batch_size": N}, "model": BASE64, "reference": BASE64}`` (the reference model is
  needed by the reference protocol). Answers with the latency record: the figure, its
  error, how it was taken, and the device's environment. Timings run one at a time:
  a second request waits for the first.

What it will do, and nothing else: open the ONNX bytes it was sent in ONNX Runtime,
from memory, with the settings it was sent (checked against ranges and the providers
this onnxruntime has), and time them. It never writes a client's file to disk, takes
no path from a client, unpickles nothing and runs no shell. It listens on loopback
unless ``--bind`` says otherwise. A body over ``--max-mb`` is refused before it is
read, and a file ONNX Runtime cannot open is refused with ONNX Runtime's reason.
Standard library, numpy and onnxruntime only.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import functools
import hashlib
import hmac
import json
import os
import platform
import re
import secrets
import socket
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Mapping

from odnas_device import API_VERSION, __version__, timing
from odnas_device.options import DEFAULT_MAX_MB, DEFAULT_PORT, MAX_MEASURE_S, TOKEN_ENV, add_serve_arguments

#: Longest first baseline calibration a client may ask for (``protocol.calibration_s``), in seconds.
MAX_CALIBRATION_S = 600.0

#: Ranges of the protocol's counts. ``max_time_s`` bounds the timed rounds; these bound
#: what it does not (warm-ups, the counts a plain timing runs at least).
_PROTOCOL_INTS = {"warmup_runs": (0, 1_000), "sessions": (2, 64), "rounds": (1, 100), "burst_runs": (5, 10_000),
                  "min_runs": (3, 100_000)}


class Refused(Exception):
    """A request the agent will not serve: ``status`` and a reason for the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def check_settings(raw: Any, providers: list[str], max_measure_s: float = MAX_MEASURE_S) -> tuple[dict, dict, int]:
    """The client's settings, checked: ``(runtime, protocol, batch_size)``; ``Refused`` (400) if not."""
    def bad(key: str, why: str) -> Refused:
        return Refused(400, f"settings.{key}: {why}")

    def integer(d: Mapping, key: str, lo: int, hi: int, where: str) -> int:
        v = d.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise bad(f"{where}{key}", f"{v!r} must be a whole number from {lo} to {hi}")
        return v

    def number(d: Mapping, key: str, lo: float, hi: float, where: str) -> float:
        v = d.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo < v <= hi:
            raise bad(f"{where}{key}", f"{v!r} must be a number above {lo:g} and at most {hi:g}")
        return float(v)

    if not isinstance(raw, dict):
        raise Refused(400, "settings: must be an object with runtime, protocol and batch_size")
    rt, pr = raw.get("runtime"), raw.get("protocol")
    if not isinstance(rt, dict) or not isinstance(pr, dict):
        raise Refused(400, "settings: runtime and protocol must be objects")
    if rt.get("provider") not in providers:
        raise bad("runtime.provider", f"{rt.get('provider')!r} is not one of this device's providers "
                                      f"({', '.join(providers)})")
    if rt.get("graph_optimization") not in timing.GRAPH_OPTIMIZATION_LEVELS:
        raise bad("runtime.graph_optimization", f"must be one of {', '.join(timing.GRAPH_OPTIMIZATION_LEVELS)}")
    runtime = {"provider": rt["provider"], "graph_optimization": rt["graph_optimization"],
               "intra_op_threads": integer(rt, "intra_op_threads", 0, 1024, "runtime."),
               "inter_op_threads": integer(rt, "inter_op_threads", 0, 1024, "runtime.")}
    if pr.get("method") not in ("reference", "plain"):
        raise bad("protocol.method", f"{pr.get('method')!r} must be reference or plain")
    if pr.get("statistic", "median") not in ("median", "mean"):
        raise bad("protocol.statistic", f"{pr.get('statistic')!r} must be median or mean")
    protocol: dict[str, Any] = {"method": pr["method"], "statistic": pr.get("statistic", "median")}
    for key, (lo, hi) in _PROTOCOL_INTS.items():
        protocol[key] = integer(pr, key, lo, hi, "protocol.")
    protocol["max_time_s"] = number(pr, "max_time_s", 0.0, max_measure_s, "protocol.")
    protocol["min_time_s"] = number(pr, "min_time_s", -1e-9, protocol["max_time_s"], "protocol.")
    protocol["calibration_s"] = number(pr, "calibration_s", 0.0, MAX_CALIBRATION_S, "protocol.")
    return runtime, protocol, integer(raw, "batch_size", 1, 4096, "")


def _decode(body: Mapping[str, Any], key: str) -> bytes:
    v = body.get(key)
    if not isinstance(v, str):
        raise Refused(400, f"{key}: must be the ONNX file as a base64 string")
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(400, f"{key}: not valid base64") from None


def _fields(buf: bytes):
    """The fields of one protobuf message: (number, wire type, value), with length-delimited
    values as bytes. ``ValueError`` when ``buf`` is not a protobuf message."""
    i, n = 0, len(buf)

    def varint() -> int:
        nonlocal i
        shift = out = 0
        while True:
            if i >= n or shift > 63:
                raise ValueError("truncated varint")
            b = buf[i]
            i += 1
            out |= (b & 0x7F) << shift
            if b < 0x80:
                return out
            shift += 7

    while i < n:
        key = varint()
        num, wire = key >> 3, key & 7
        if wire == 0:
            yield num, wire, varint()
        elif wire == 2:
            size = varint()
            if i + size > n:
                raise ValueError("truncated field")
            yield num, wire, buf[i:i + size]
            i += size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"wire type {wire}")


#: Where ONNX messages hold tensors and graphs (onnx.proto field numbers): a tensor is
#: external when its data_location (14) is 1 or it has external_data (13).
_TENSOR, _GRAPH, _NODE, _ATTR, _SPARSE, _FUNCTION, _TRAINING = range(7)
_CHILDREN = {
    "model": {7: _GRAPH, 25: _FUNCTION, 20: _TRAINING},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTR},
    _ATTR: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
    _FUNCTION: {7: _NODE},
    _TRAINING: {1: _GRAPH, 2: _GRAPH},
}


def uses_external_data(model: bytes) -> bool:
    """Whether any tensor of the ONNX model points at data outside the file. Read from the
    protobuf itself, so it does not depend on which ONNX Runtime version checks paths
    (through a memoryview: nested messages are walked without copying them)."""
    stack: list[tuple[Any, memoryview]] = [("model", memoryview(model))]
    while stack:
        kind, buf = stack.pop()
        for num, wire, value in _fields(buf):
            if kind == _TENSOR:
                if (num == 14 and wire == 0 and value == 1) or (num == 13 and wire == 2):
                    return True
            elif wire == 2 and num in _CHILDREN.get(kind, {}):
                stack.append((_CHILDREN[kind][num], value))
    return False


def open_model(model: bytes, runtime: Mapping[str, Any], what: str = "model"):
    """An ONNX Runtime session of ``model``'s bytes, or ``Refused`` (422) with why it is not
    a model this agent times: not ONNX, external data, unknown ops, or not one float input
    of fixed size after the batch dimension."""
    if not model:
        raise Refused(422, f"{what}: the file is empty")
    try:
        external = uses_external_data(model)
    except ValueError as e:
        raise Refused(422, f"{what}: not an ONNX model (it does not read as a protobuf message: {e})") from None
    if external:
        raise Refused(422, f"{what}: its weights are external data (files outside the model); this agent "
                           "times only self-contained ONNX files")
    try:
        sess = timing.make_session(model, runtime)
    except Exception as e:  # ONNX Runtime's own reason, first line: INVALID_PROTOBUF, external data, ops...
        line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise Refused(422, f"{what}: ONNX Runtime cannot open it as an ONNX model: {line[:300]}") from None
    inputs = sess.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)":
        raise Refused(422, f"{what}: expected one float input, got "
                           f"{', '.join(f'{i.name}: {i.type}' for i in inputs) or 'none'}")
    if not all(isinstance(d, int) and d > 0 for d in inputs[0].shape[1:]):
        raise Refused(422, f"{what}: input {inputs[0].name} must have fixed sizes after the batch dimension, "
                           f"got {inputs[0].shape}")
    return sess


@functools.lru_cache(maxsize=1)
def device_id() -> str:
    """A stable id of this device: a hash of its machine id (``/etc/machine-id``), else of
    its name and host name. Two boards with the same name and CPU still differ by it."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            text = open(path, "rb").read().strip()
        except OSError:
            continue
        if text:
            return hashlib.sha256(text).hexdigest()[:16]
    return hashlib.sha256(f"{timing.device_model()}|{platform.node()}".encode()).hexdigest()[:16]


class Agent:
    """What the server serves: the device's identity and one timing at a time."""

    def __init__(self, token: str, max_bytes: int, max_measure_s: float = MAX_MEASURE_S) -> None:
        import onnxruntime as ort

        self.token = token
        self.max_bytes = max_bytes
        self.max_measure_s = max_measure_s
        self.providers = list(ort.get_available_providers())
        self.ort_version = ort.__version__
        self.lock = threading.Lock()  # the queue: one timing at a time on this device
        self.busy_since: float | None = None
        self.served = 0
        self._baselines: dict[tuple, timing.Baseline] = {}

    def authorized(self, header: str | None) -> bool:
        scheme, _, given = (header or "").partition(" ")
        return scheme == "Bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())

    def info(self) -> dict[str, Any]:
        return {"agent": "odnas-device", "version": __version__, "api": API_VERSION,
                "device": timing.device_model(), "device_id": device_id(), **timing.identity(),
                "machine": platform.machine(), "system": platform.platform(),
                "python": platform.python_version(), "providers": self.providers,
                "max_bytes": self.max_bytes, "max_measure_s": self.max_measure_s,
                "busy_s": None if self.busy_since is None else round(time.time() - self.busy_since, 1),
                "served": self.served, "calibrated": timing.calibrated()}

    def measure(self, raw: bytes) -> dict[str, Any]:
        """Time the request's model. Everything, the JSON and the sessions included, runs
        under the lock, so nothing of a second request runs beside a timing."""
        with self.lock:
            self.busy_since = time.time()
            try:
                fields, runtime, batch = self._measure(raw)
            finally:
                self.busy_since = None
            self.served += 1
        return {**fields, **timing.environment(runtime, batch), "device": timing.device_model(),
                "device_id": device_id(), "agent_version": __version__}

    def _measure(self, raw: bytes):
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise Refused(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise Refused(400, "the body must be a JSON object with settings, model and reference")
        runtime, protocol, batch = check_settings(body.get("settings"), self.providers, self.max_measure_s)
        model = _decode(body, "model")
        open_model(model, runtime, "model")
        ref = None
        if protocol["method"] == "reference":
            reference = _decode(body, "reference")
            open_model(reference, runtime, "reference")
            ref = (timing.opener(reference, runtime, batch), self._baseline(reference, runtime, protocol, batch))
        return timing.measure(timing.opener(model, runtime, batch), protocol, ref), runtime, batch

    def _baseline(self, reference: bytes, runtime, protocol, batch: int) -> timing.Baseline:
        key = timing.environment(runtime, batch)
        memo = (json.dumps(key, sort_keys=True), timing.sha12(reference), protocol["burst_runs"],
                protocol["calibration_s"])
        if memo not in self._baselines:
            self._baselines[memo] = timing.baseline(
                key, reference, timing.opener(reference, runtime, batch), calibration_s=protocol["calibration_s"],
                burst_runs=protocol["burst_runs"], warmup_runs=protocol["warmup_runs"])
        return self._baselines[memo]


def make_handler(agent: Agent, log=None):
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))

    class Handler(BaseHTTPRequestHandler):
        server_version = f"odnas-device/{__version__}"
        timeout = 60  # seconds a client may take to send its request

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (http.server's name)
            pass  # one line per request is written by _answer

        def _answer(self, status: int, obj: Mapping[str, Any], what: str) -> None:
            data = json.dumps(obj).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client left before its answer: nothing more to say to it
                what += " (the client had gone)"
            log(f"{time.strftime('%H:%M:%S')} {self.client_address[0]} {self.command} {self.path} {status} {what}")

        def _length(self) -> int | None:
            text = self.headers.get("Content-Length")
            return int(text) if text is not None and re.fullmatch(r"[0-9]{1,15}", text) else None

        def _refuse(self, e: Refused) -> None:
            # A body of allowed size is read before the refusal, so the client reads the
            # answer instead of a reset connection; a larger one is never read.
            n = self._length()
            if n is not None and n <= agent.max_bytes and e.status not in (411, 413) and not self._read:
                try:
                    self.rfile.read(n)
                except OSError:
                    pass
            self.close_connection = True
            self._answer(e.status, {"error": e.reason}, e.reason)

        def _gate(self, path: str) -> None:
            """The token first, whatever was asked: without it, nothing else is said."""
            if not agent.authorized(self.headers.get("Authorization")):
                raise Refused(401, "missing or wrong token (send Authorization: Bearer TOKEN)")
            if self.path != path or self.command != {"/v1/info": "GET", "/v1/measure": "POST"}.get(path):
                raise Refused(404, f"no such endpoint {self.command} {self.path}; see GET /v1/info")

        def _serve(self, path: str, action) -> None:
            self._read = False  # whether the body was read (a refusal reads it, so the client gets the answer)
            try:
                self._gate(path)
                action()
            except Refused as e:
                self._refuse(e)
            except Exception as e:  # a bug, or ONNX Runtime failing mid-timing: the client hears why
                line = str(e).splitlines()[0] if str(e) else ""
                self._refuse(Refused(500, f"timing failed: {type(e).__name__}: {line}"))

        def do_GET(self) -> None:  # noqa: N802
            self._serve("/v1/info" if self.path == "/v1/info" else "", lambda: self._answer(200, agent.info(), "info"))

        def do_POST(self) -> None:  # noqa: N802
            self._serve("/v1/measure" if self.path == "/v1/measure" else "", self._measure)

        def _other(self) -> None:
            self._serve("", lambda: None)

        do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _other  # noqa: N815

        def _measure(self) -> None:
            if self.headers.get("Content-Length") is None:
                raise Refused(411, "a Content-Length is required")
            n = self._length()
            if n is None:
                raise Refused(400, "Content-Length must be a whole number of bytes")
            if n > agent.max_bytes:
                raise Refused(413, f"the request is {n} bytes; this agent takes at most "
                                   f"{agent.max_bytes} (odnas-device serve --max-mb)")
            raw = self.rfile.read(n)
            self._read = True
            t0 = time.perf_counter()
            rec = agent.measure(raw)
            self._answer(200, rec, f"{rec['latency_ms']:.4g} ms in {time.perf_counter() - t0:.1f} s")

    return Handler


def serve(bind: str = "127.0.0.1", port: int = DEFAULT_PORT, token: str | None = None,
          max_mb: float = DEFAULT_MAX_MB, max_measure_s: float = MAX_MEASURE_S, out=None) -> None:
    """Serve until interrupted. Prints the address and the token first."""
    out = out or sys.stdout
    token = token or os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(24)
    agent = Agent(token, int(max_mb * 1024 * 1024), max_measure_s)
    # Models come from memory, never from disk; an empty working directory of our own
    # leaves nothing for an external-data reference to point at.
    os.chdir(tempfile.mkdtemp(prefix="odnas-device-"))
    server_class = ThreadingHTTPServer
    if ":" in bind:  # an IPv6 address, such as :: or ::1
        server_class = type("ThreadingHTTPServer6", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
    server = server_class((bind, port), make_handler(agent))
    server.daemon_threads = True
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in str(host) else host
    print(f"odnas-device {__version__}: serving http://{shown}:{port} ({timing.device_model()}, onnxruntime "
          f"{agent.ort_version}, {', '.join(agent.providers)})", file=out, flush=True)
    if host in ("0.0.0.0", "::"):
        print(f"odnas-device: listening on every interface: the search's machine uses this device's own address "
              f"(http://DEVICE-ADDRESS:{port}); the token travels in clear, so only on a network you trust",
              file=out, flush=True)
    print(f"odnas-device: token {token}", file=out, flush=True)
    print(f"odnas-device: on the search's machine: export {TOKEN_ENV}={token}; "
          f"odnas search --device http://{shown}:{port} ...", file=out, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def run_serve(a: argparse.Namespace) -> int:
    try:
        serve(a.bind, a.port, max_mb=a.max_mb, max_measure_s=a.max_measure_s)
    except OSError as e:  # the port is taken, the address is not this device's
        print(f"odnas-device: error: cannot listen on {a.bind}:{a.port}: {e.strerror or e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="odnas-device", description="odnas's device agent: times ONNX models on "
                                 "this device for an odnas search. The token is "
                                 f"${TOKEN_ENV} when set, else a new one, printed at start.")
    ap.add_argument("--version", action="version", version=f"odnas-device {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve", help="serve timings until interrupted")
    add_serve_arguments(p)
    p.set_defaults(fn=run_serve)
    a = ap.parse_args(argv)
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
