"""Timing on the device: the client side of ``odnas_device.agent``.

``DeviceLatencyBackend`` is a latency backend like ``OrtLatencyBackend``, but it sends
the ONNX file, the profile's settings and the reference model to a device agent and
returns the device's figure, with the device's environment as the record's key. A
timing that fails because the device went away (refused connection, reset) is logged
with its reason and tried again, ``retries`` times with a doubling wait; then
``DeviceUnreachable`` stops whatever asked. A timeout is not tried again (the agent may
still be timing), nor is a refusal (a wrong token): either would fail again. A model
the device cannot take or time raises ``DeviceRefusedModel``: that candidate fails
alone. Over ``urllib``, with the agent's own timing module for the record's key.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Mapping

from odnas_device import API_VERSION, timing

from odnas.cost.latency import LatencyResult, OrtLatencyBackend, input_shape
from odnas.cost.reference import reference_onnx
from odnas.errors import OdnasError
from odnas.profiles import DeviceSpec, HardwareProfile
from odnas.records import LatencyKey


class DeviceError(OdnasError):
    """The device agent refused a request: the message says what and why."""


class DeviceUnreachable(DeviceError):
    """The device agent could not be reached or failed, past the retries."""

    exit_code = 3


class DeviceRefusedModel(DeviceError):
    """The device could not time this one model (its onnxruntime cannot open it, or it
    failed while timing it): the candidate fails, and the search goes on."""


class DeviceTooSlow(DeviceUnreachable):
    """The device agent did not answer within the timeout; not retried."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # answered as the HTTP error it is


class DeviceClient:
    """One agent at ``url``, with ``token``; every call raises ``DeviceError`` (refused) or
    ``DeviceUnreachable`` (not there, too slow, failed)."""

    def __init__(self, url: str, token: str, timeout_s: float = 300.0) -> None:
        self.url, self.token, self.timeout_s = url.rstrip("/"), token, timeout_s
        # No proxy (the token would go to it) and no redirects (they would carry it elsewhere).
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None,
              timeout_s: float | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        try:
            with self._opener.open(req, timeout=timeout_s or self.timeout_s) as resp:
                answer = json.loads(resp.read())
            if not isinstance(answer, dict):
                raise ValueError("not an object")
            return answer
        except urllib.error.HTTPError as e:
            try:
                reason = json.loads(e.read()).get("error") or e.reason
            except (ValueError, AttributeError, OSError, http.client.HTTPException):
                reason = e.reason
            if (e.code == 500 and path == "/v1/measure") or (e.code == 422 and str(reason).startswith("model:")):
                raise DeviceRefusedModel(f"the device at {self.url} could not time it: {reason}") from None
            if e.code >= 500:
                raise DeviceUnreachable(f"the device agent at {self.url} failed: {reason}") from None
            if e.code == 401:
                raise DeviceError(f"the device agent at {self.url} refused the token ({reason}); set the token "
                                  "it printed at start in the profile's token variable (ODNAS_DEVICE_TOKEN by "
                                  "default)") from None
            raise DeviceError(f"the device agent at {self.url} refused the request ({e.code}): {reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError,
                OSError) as e:
            why = getattr(e, "reason", None) or e
            if isinstance(why, (socket.timeout, TimeoutError)) or "timed out" in str(why):
                # Not tried again: the agent may still be timing, and a retry would queue behind it.
                raise DeviceTooSlow(f"the device agent at {self.url} gave no answer within "
                                    f"{timeout_s or self.timeout_s:g} s; raise the profile's device.timeout_s "
                                    "if the device is this slow") from None
            raise DeviceUnreachable(f"the device agent at {self.url} is not reachable: {why}") from None
        except ValueError:
            raise DeviceUnreachable(f"{self.url} answered with something that is not JSON; is it an odnas "
                                    "device agent?") from None

    def info(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """The agent's identity; refuses an agent of another API version."""
        info = self._call("GET", "/v1/info", timeout_s=timeout_s)
        if info.get("agent") != "odnas-device" or info.get("api") != API_VERSION:
            raise DeviceError(f"{self.url} is not an odnas device agent of API {API_VERSION} "
                              f"(it says {info.get('agent')!r}, API {info.get('api')!r}); install the same "
                              "odnas-device version on the device")
        return info

    def measure(self, model: bytes, settings: Mapping[str, Any], reference: bytes | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"settings": dict(settings), "model": base64.b64encode(model).decode()}
        if reference is not None:
            body["reference"] = base64.b64encode(reference).decode()
        return self._call("POST", "/v1/measure", body)


def check_agent(info: Mapping[str, Any], profile: HardwareProfile, url: str) -> dict[str, Any]:
    """``info`` from the agent at ``url``, checked to take timings under ``profile``: its
    provider, and a protocol within what the agent allows; ``DeviceError`` if not."""
    if profile.runtime.provider not in info.get("providers", []):
        raise DeviceError(f"the device {info.get('device')} at {url} has no {profile.runtime.provider} "
                          f"(it has {', '.join(info.get('providers', []))})")
    limit = info.get("max_measure_s")
    if limit is not None and profile.protocol.max_time_s > float(limit):
        raise DeviceError(f"profile {profile.name!r} asks for timings of up to {profile.protocol.max_time_s:g} s "
                          f"(protocol.max_time_s); the agent at {url} allows {float(limit):g} s (odnas-device "
                          "serve --max-measure-s)")
    return dict(info)


def check_link(profile: HardwareProfile) -> dict[str, Any]:
    """One try at the profile's device agent, before a search makes its run dir: the token,
    the link, the agent's version, and whether it takes the profile."""
    assert profile.device is not None
    return check_agent(DeviceClient(profile.device.url, token_of(profile.device), 10.0).info(), profile,
                       profile.device.url)


def settings_of(profile: HardwareProfile) -> dict[str, Any]:
    """What the agent needs of a profile: its runtime, protocol and batch size."""
    return {"runtime": dataclasses.asdict(profile.runtime), "protocol": dataclasses.asdict(profile.protocol),
            "batch_size": profile.batch_size}


def token_of(spec: DeviceSpec) -> str:
    token = os.environ.get(spec.token_env, "")
    if not token:
        raise DeviceError(f"no token for the device agent at {spec.url}: set ${spec.token_env} to the token "
                          "`odnas-device serve` printed")
    return token


class DeviceLatencyBackend:
    """Times on the device agent of ``spec``, retrying a device that went away."""

    def __init__(self, spec: DeviceSpec, token: str | None = None, log: Callable[[str], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.spec = spec
        self.client = DeviceClient(spec.url, token if token is not None else token_of(spec), spec.timeout_s)
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.sleep = sleep
        self._info: dict[str, Any] | None = None
        self.failures = 0  # timings that failed and were tried again

    @classmethod
    def of(cls, profile: HardwareProfile, **kw) -> "DeviceLatencyBackend":
        assert profile.device is not None
        return cls(profile.device, **kw)

    def check(self, profile: HardwareProfile) -> dict[str, Any]:
        """The agent's identity, checked to take the profile; ``DeviceError`` if not."""
        self._info = check_agent(self._retrying("reaching the agent", lambda: self.client.info()), profile,
                                 self.spec.url)
        return self._info

    def key(self, profile: HardwareProfile) -> LatencyKey:
        """The comparability key of a figure this device would give under ``profile``."""
        info = self._info or self.check(profile)
        return LatencyKey(**timing.environment(dataclasses.asdict(profile.runtime), profile.batch_size, info),
                          device_id=info.get("device_id"))

    def calibration_due(self, profile: HardwareProfile, shape: tuple[int, ...]) -> float:
        """Seconds the device's first timing under ``profile`` on inputs of ``shape`` will
        first spend calibrating its reference (0: the agent has it cached, an older agent
        that does not say, or no reference protocol)."""
        p = profile.protocol
        info = self._info or self.check(profile)
        if p.method != "reference" or info.get("calibrated") is None or not info.get("cpu_signature"):
            return 0.0
        env = timing.environment(dataclasses.asdict(profile.runtime), profile.batch_size, info)
        return timing.calibration_due(env, reference_onnx(shape).read_bytes(), calibration_s=p.calibration_s,
                                      burst_runs=p.burst_runs, calibrated=info["calibrated"],
                                      signature=info["cpu_signature"])

    def measure(self, onnx_path: str | Path, profile: HardwareProfile) -> LatencyResult:
        model = Path(onnx_path).read_bytes()
        ref = reference_onnx(input_shape(onnx_path)).read_bytes() if profile.protocol.method == "reference" else None
        cap = (self._info or self.check(profile)).get("max_bytes")
        size = 4 * (len(model) + len(ref or b"")) // 3 + 4096  # base64 and the settings
        if cap and size > cap:
            raise DeviceRefusedModel(f"{Path(onnx_path).name} is about {size} bytes to send, over what the agent "
                                     f"at {self.spec.url} takes ({cap}); start it with a larger --max-mb")
        d = self._retrying(f"timing {Path(onnx_path).name}",
                           lambda: self.client.measure(model, settings_of(profile), ref))
        # An agent from before timings carried the CPU's signature still gives it in its info.
        sig = d.get("cpu_signature") or (self._info or {}).get("cpu_signature")
        return LatencyResult.from_dict({**d, "cpu_signature": sig, "agent": self.spec.url})

    def _retrying(self, what: str, call: Callable[[], Any]) -> Any:
        wait, t0 = self.spec.retry_wait_s, time.monotonic()
        for attempt in range(self.spec.retries + 1):
            try:
                return call()
            except DeviceTooSlow:
                raise
            except DeviceUnreachable as e:
                if attempt == self.spec.retries:
                    raise DeviceUnreachable(f"{e}; gave up {what} after {attempt + 1} "
                                            f"attempt{'s' if attempt else ''} over "
                                            f"{time.monotonic() - t0:.0f} s") from None
                self.failures += 1
                self.log(f"odnas: device: {what} failed ({e}); trying again in {wait:g} s "
                         f"(attempt {attempt + 2} of {self.spec.retries + 1})")
                self.sleep(wait)
                wait *= 2
        raise AssertionError("unreachable")


def backend_for(profile: HardwareProfile):
    """The latency backend a profile asks for: its device agent, else this host."""
    return DeviceLatencyBackend.of(profile) if profile.device is not None else OrtLatencyBackend()
