"""The device agent (``odnas_device.agent``), run on loopback in a subprocess as on a
device: it serves a real search, refuses what it must, and a search survives, or stops
cleanly, when the device goes away. All traffic goes to 127.0.0.1."""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import os
import pickle
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from odnas.cost.device import DeviceClient, DeviceError, DeviceLatencyBackend, DeviceUnreachable, settings_of
from odnas.profiles import DeviceSpec, with_device
from tests.conftest import run_cli

TOKEN = "test-token-0123456789"
LOOPBACK = "127.0.0.1"


class Agent:
    """``odnas-device serve`` in a subprocess with its own cache, as a device would run it."""

    def __init__(self, tmp: Path, port: int = 0, *extra: str, token: str = TOKEN) -> None:
        env = {**os.environ, "ODNAS_DEVICE_TOKEN": token, "ODNAS_CACHE_DIR": str(tmp / "device-cache")}
        self.proc = subprocess.Popen([sys.executable, "-m", "odnas_device", "serve", "--port", str(port), *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        first = self.proc.stdout.readline()
        m = re.search(r"serving (http://[\d.]+:(\d+))", first)
        err = self.proc.stderr.read() if self.proc.poll() is not None else ""
        assert m, f"the agent did not start: {first!r} {err}"
        self.url, self.port = m.group(1), int(m.group(2))
        self.banner = first + self.proc.stdout.readline() + self.proc.stdout.readline()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)

    def raw(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """One request as any client could send it: (status, JSON answer)."""
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=30)
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        out = resp.status, json.loads(resp.read() or b"{}")
        conn.close()
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    a = Agent(tmp_path_factory.mktemp("agent"))
    yield a
    a.kill()


@pytest.fixture
def quick(short_profile):
    return short_profile()


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    """A small real candidate, exported."""
    import torch

    from odnas.cost.onnx import export_onnx
    from odnas.spaces import get_space

    space = get_space("mlp")
    torch.manual_seed(0)
    params = {"hidden_size_1": 32, "hidden_size_2": 16, "dropout": 0.1, "lr": 0.01, "batch_size": 32, "epochs": 1}
    return export_onnx(space.build(params, (1, 8, 8), 10), (1, 8, 8), tmp_path_factory.mktemp("m") / "m.onnx")


def measure_body(model: bytes, profile, reference: bytes | None = None) -> bytes:
    body = {"settings": settings_of(profile), "model": base64.b64encode(model).decode()}
    if reference is not None:
        body["reference"] = base64.b64encode(reference).decode()
    return json.dumps(body).encode()


AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


# ---------------------------------------------------------------- it serves


def test_the_agent_prints_its_loopback_address_and_token_and_says_who_it_is(agent):
    assert agent.url.startswith(f"http://{LOOPBACK}:")  # loopback unless told otherwise
    assert f"token {TOKEN}" in agent.banner and "export ODNAS_DEVICE_TOKEN=" in agent.banner
    info = DeviceClient(agent.url, TOKEN).info()
    assert info["agent"] == "odnas-device" and "CPUExecutionProvider" in info["providers"]
    import onnxruntime

    assert info["ort_version"] == onnxruntime.__version__ and info["device"] and info["cpu_model"]


def test_the_agent_imports_nothing_of_torch_ax_or_lightning():
    code = ("import sys, odnas_device.agent; "
            "print(sorted(m for m in ('torch', 'ax', 'lightning', 'pytorch_lightning', 'botorch', 'odnas') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_timing_on_the_agent_is_a_latency_record_from_the_device(agent, quick, onnx_file):
    backend = DeviceLatencyBackend(with_device(quick, agent.url).device, token=TOKEN)
    lat = backend.measure(onnx_file, quick)
    assert lat.method == "reference" and lat.latency_ms > 0 and lat.latency_ms_sem > 0
    assert lat.agent == agent.url and lat.device and "device agent" in lat.source
    assert lat.key == backend.key(quick)  # the cache compares records by this
    plain = dataclasses.replace(quick, protocol=dataclasses.replace(quick.protocol, method="plain"))
    assert backend.measure(onnx_file, plain).method == "plain"
    from odnas_device.timing import cpu_signature

    assert lat.cpu_signature == cpu_signature()  # the agent runs on this host
    real = backend.client.measure  # an agent from before timings carried it: its info still does
    backend.client.measure = lambda *a: {k: v for k, v in real(*a).items() if k != "cpu_signature"}
    assert backend.measure(onnx_file, plain).cpu_signature == cpu_signature()


def test_the_lane_caches_device_figures_by_arch_id_and_device(agent, quick, tmp_path):
    from odnas.cost.lane import CostLane
    from odnas.spaces import get_space

    os.environ["ODNAS_DEVICE_TOKEN"] = TOKEN
    try:
        lane = CostLane(get_space("mlp"), (1, 8, 8), 10, with_device(quick, agent.url), tmp_path / "costs")
        params = get_space("mlp").sample(__import__("random").Random(0))
        served = DeviceClient(agent.url, TOKEN).info()["served"]
        rec = lane.costs(params)
        assert rec.latency["agent"] == agent.url
        assert lane.costs(params).metrics == rec.metrics  # from the cache
        assert DeviceClient(agent.url, TOKEN).info()["served"] == served + 1
        # A record from another device is not this device's figure: timed again.
        stored = json.loads((tmp_path / "costs" / f"{rec.arch_id}.json").read_text())
        stored["latency"]["host"] = "another-device"
        (tmp_path / "costs" / f"{rec.arch_id}.json").write_text(json.dumps(stored))
        assert lane.costs(params).latency["host"] != "another-device"
        assert DeviceClient(agent.url, TOKEN).info()["served"] == served + 2
    finally:
        del os.environ["ODNAS_DEVICE_TOKEN"]


# ---------------------------------------------------------------- what it refuses


def test_refused_a_request_with_no_token(agent):
    status, answer = agent.raw("GET", "/v1/info")  # tried: no Authorization header at all
    assert status == 401 and "token" in answer["error"]


def test_refused_a_request_with_a_wrong_token(agent):
    status, _ = agent.raw("GET", "/v1/info", headers={"Authorization": "Bearer " + TOKEN[:-1]})  # tried: one char off
    assert status == 401
    with pytest.raises(DeviceError, match="refused the token"):  # and the client says what to do
        DeviceClient(agent.url, "wrong").info()


def test_refused_a_body_over_the_size_cap_before_reading_it(agent):
    # Tried: a request that announces 10 GB and sends nothing more; the answer comes at once.
    t0 = time.perf_counter()
    status, answer = agent.raw("POST", "/v1/measure", headers={**AUTH, "Content-Length": str(10 ** 10)})
    assert status == 413 and "at most" in answer["error"] and time.perf_counter() - t0 < 5


def test_refused_a_body_without_a_length(agent):
    # Tried: a chunked upload, whose size is not known before it is read. The headers alone
    # are sent: the answer comes before any of the body.
    with socket.create_connection((LOOPBACK, agent.port), timeout=30) as sock:
        sock.sendall(f"POST /v1/measure HTTP/1.1\r\nHost: {LOOPBACK}\r\nAuthorization: Bearer {TOKEN}\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        status_line = sock.makefile("rb").readline().decode()
    assert status_line.split()[1] == "411", status_line


def test_refused_a_file_that_is_not_onnx_with_a_reason(agent, quick):
    # Tried: a shell script sent as the model.
    status, answer = agent.raw("POST", "/v1/measure", measure_body(b"#!/bin/sh\necho hi > /tmp/x\n", quick, b"x"),
                               AUTH)
    assert status == 422 and "not an ONNX model" in answer["error"]
    # Tried: bytes that read as a protobuf message but not as a model; ONNX Runtime's own reason.
    status, answer = agent.raw("POST", "/v1/measure", measure_body(b"\x08\x07", quick, b"x"), AUTH)
    assert status == 422 and "ONNX Runtime cannot open it" in answer["error"]


def test_refused_a_pickle_and_never_unpickled_it(agent, quick, tmp_path):
    # Tried: a pickle whose loading would create a file; the agent refuses it, and the file never appears.
    marker = tmp_path / "unpickled"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    status, answer = agent.raw("POST", "/v1/measure", measure_body(pickle.dumps(Evil()), quick, b"x"), AUTH)
    assert status == 422 and "ONNX" in answer["error"]
    assert not marker.exists()


def test_refused_a_model_whose_weights_point_at_a_file_on_the_device(agent, quick):
    # Tried: an ONNX model whose initializer is "external data" at /etc/hostname.
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((64,), np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "/etc/hostname"), ("offset", "0"), ("length", "4")):
        e = w.external_data.add()
        e.key, e.value = k, v
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], initializer=[w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    plain = dataclasses.replace(quick, protocol=dataclasses.replace(quick.protocol, method="plain"))
    status, answer = agent.raw("POST", "/v1/measure", measure_body(model.SerializeToString(), plain), AUTH)
    assert status == 422 and "external data" in answer["error"].lower()


def test_refused_settings_outside_what_the_agent_takes(agent, quick, onnx_file):
    model = onnx_file.read_bytes()
    tries = {  # tried: a provider it has not, negative threads, an hour-long timing
        "runtime.provider": dataclasses.replace(quick, runtime=dataclasses.replace(
            quick.runtime, provider="TensorrtExecutionProvider")),
        "runtime.intra_op_threads": dataclasses.replace(quick, runtime=dataclasses.replace(
            quick.runtime, intra_op_threads=-1)),
        "protocol.max_time_s": dataclasses.replace(quick, protocol=dataclasses.replace(
            quick.protocol, max_time_s=3600.0)),
    }
    for key, prof in tries.items():
        status, answer = agent.raw("POST", "/v1/measure", measure_body(model, prof, model), AUTH)
        assert status == 400 and answer["error"].startswith(f"settings.{key}"), (key, answer)


def test_refused_paths_and_methods_outside_the_api(agent):
    # Tried: a path outside the API, and the API's paths with the other method.
    for method, path in (("GET", "/../../etc/passwd"), ("GET", "/v1/measure"), ("POST", "/v1/info")):
        status, _ = agent.raw(method, path, b"{}" if method == "POST" else None, AUTH)
        assert status == 404
    status, answer = agent.raw("POST", "/v1/measure", b"not json", AUTH)  # tried: a body that is not JSON
    assert status == 400 and "JSON" in answer["error"]


# ---------------------------------------------------------------- faults


def _spec(url: str, **kw) -> DeviceSpec:
    return DeviceSpec(url=url, **{"retries": 0, "retry_wait_s": 0.0, "timeout_s": 60.0, **kw})


def _slow(profile):
    """A timing of a few seconds on the agent."""
    return dataclasses.replace(profile, protocol=dataclasses.replace(
        profile.protocol, sessions=8, rounds=6, burst_runs=400, max_time_s=30.0))


def test_the_agent_killed_mid_timing_fails_the_measurement_with_a_reason(tmp_path, quick, onnx_file):
    a = Agent(tmp_path)
    threading.Timer(1.0, a.kill).start()  # tried: SIGKILL while it times
    backend = DeviceLatencyBackend(_spec(a.url), token=TOKEN)
    with pytest.raises(DeviceUnreachable, match="not reachable|failed") as e:
        backend.measure(onnx_file, _slow(quick))
    assert "gave up timing m.onnx after 1 attempt over" in str(e.value)


def test_a_device_that_comes_back_is_retried_and_the_timing_succeeds(tmp_path, quick, onnx_file):
    port = free_port()
    a = Agent(tmp_path, port)
    a.kill()  # tried: the device is away when the timing is asked for, and back on the second attempt
    back: list[Agent] = []
    lines: list[str] = []
    backend = DeviceLatencyBackend(_spec(a.url, retries=2), token=TOKEN, log=lines.append,
                                   sleep=lambda s: back.append(Agent(tmp_path, port)) if not back else None)
    try:
        lat = backend.measure(onnx_file, quick)
    finally:
        for b in back:
            b.kill()
    assert lat.latency_ms > 0 and backend.failures == 1
    assert len(lines) == 1 and "Connection refused" in lines[0] and "attempt 2 of 3" in lines[0]


def test_a_device_says_before_its_first_timing_that_it_calibrates_its_reference(tmp_path, quick, onnx_file):
    """The agent's info lists the references it has calibrated, so a search can say that
    the first timing on a new device waits for its calibration (30 s under the shipped
    profiles), as it does for a new host; and not once the device has it."""
    a = Agent(tmp_path)
    try:
        backend = DeviceLatencyBackend(_spec(a.url), token=TOKEN)
        assert backend.calibration_due(quick, (1, 8, 8)) == pytest.approx(quick.protocol.calibration_s)
        backend.measure(onnx_file, quick)
        again = DeviceLatencyBackend(_spec(a.url), token=TOKEN)  # the next search asks the agent afresh
        assert again.calibration_due(quick, (1, 8, 8)) == 0.0
        assert again.calibration_due(quick, (1, 28, 28)) > 0  # another input shape has a reference of its own
        plain = dataclasses.replace(quick, protocol=dataclasses.replace(quick.protocol, method="plain"))
        assert again.calibration_due(plain, (1, 28, 28)) == 0.0  # no reference, nothing to calibrate
    finally:
        a.kill()


def test_a_slow_agent_past_the_timeout_fails_the_measurement(agent, quick, onnx_file):
    backend = DeviceLatencyBackend(_spec(agent.url, timeout_s=0.5), token=TOKEN)
    with pytest.raises(DeviceUnreachable, match=r"no answer within 0.5 s"):  # tried: a timing longer than 0.5 s
        backend.measure(onnx_file, _slow(quick))


# ---------------------------------------------------------------- a real search


def test_a_search_timed_on_the_agent_completes_stops_when_it_goes_and_resumes_when_it_is_back(tmp_path, quick):
    a = Agent(tmp_path)
    prof = dataclasses.replace(quick, budgets={})
    raw = prof.to_dict()
    raw["device"] = {"url": a.url, "retries": 1, "retry_wait_s": 0.2}  # the profile's device section
    profile = tmp_path / "on-device.yaml"
    profile.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    env_before = os.environ.get("ODNAS_DEVICE_TOKEN")
    os.environ["ODNAS_DEVICE_TOKEN"] = TOKEN  # the CLI's subprocesses read it
    try:
        proc = run_cli("search", "--profile", str(profile), "--space", "mlp", "--trials", "2", "--parallel", "1",
                       "--method", "sobol", "--fixed", "epochs=1", "--constraint", "val_acc >= 0.1", "--threads",
                       "1", "--run-dir", str(run), "--json", "--quiet")
        assert proc.returncode == 0, proc.stderr
        said = (run / "odnas.log").read_text() + proc.stderr
        assert "timing latency on" in said
        assert "timing the device's latency reference first" in said  # a new device: its first timing calibrates
        costs = [json.loads(p.read_text()) for p in (run / "costs").glob("*.json")]
        assert costs and all(c["latency"]["agent"] == a.url for c in costs)

        out = tmp_path / "model.onnx"
        card = json.loads(run_cli("export", str(run), "-o", str(out), "--json", check=True).stdout)
        assert card["latency"]["agent"] == a.url and "device agent at " + a.url in card["latency"]["timed_on"]

        a.kill()  # the device goes away; the next candidate cannot be timed
        proc = run_cli("resume", str(run), "--trials", "3", "--quiet")
        err = [line for line in proc.stderr.splitlines() if line.startswith("odnas:") and "trying again" not in line]
        assert proc.returncode == 3, proc.stderr
        assert len(err) == 1 and "not reachable" in err[0] and f"odnas resume {run}" in err[0]
        assert "trying again" in proc.stderr  # the failed attempt, with its reason, told where the user sees it
        assert "trying again" in (run / "odnas.log").read_text()  # and in the run's log, as docs/device.md says

        a = Agent(tmp_path)  # back, at a new address (a phone's new IP): resume is told where
        proc = run_cli("resume", str(run), "--trials", "3", "--device", a.url, "--quiet")
        assert proc.returncode == 0, proc.stderr
        from odnas.loop.store import load_run

        assert sum(r.state == "completed" for r in load_run(run).rows) == 3  # the first two kept, one more
        assert json.loads((run / "odnas.json").read_text())["profile"]["device"]["url"] == a.url
    finally:
        a.kill()
        if env_before is None:
            os.environ.pop("ODNAS_DEVICE_TOKEN", None)
        else:
            os.environ["ODNAS_DEVICE_TOKEN"] = env_before


def test_calibrate_run_times_the_reference_set_on_the_agent_and_fits(agent, quick, tmp_path):
    from odnas.cost.calibrate import REFERENCES, fit_calibration, time_on_device

    backend = DeviceLatencyBackend(_spec(agent.url), token=TOKEN)
    table, device = time_on_device(tmp_path / "cal", with_device(quick, agent.url), backend=backend)
    rows = table.read_text().splitlines()
    assert len(rows) == 1 + len(REFERENCES) and device
    cal = fit_calibration(quick, table, model="ratio", device=device)
    # The same machine on both sides: it ranks the references as the host does, and their
    # ratio is near 1 (within this host's speed modes, ~1.9x, under this short protocol
    # and a loaded test machine; benchmarks/device.py measures the agreement properly).
    assert cal.n == len(REFERENCES) and cal.spearman > 0.8 and 0.5 < np.exp(cal.a) < 2.0, (
        cal.spearman, np.exp(cal.a))  # which of the two, when it fails under load


def test_a_device_gone_mid_search_stops_it_once_with_one_reason_and_keeps_what_was_trained(tmp_path,
                                                                                        short_profile_file):
    from odnas.loop.config import SearchConfig
    from odnas.loop.driver import create_run, run_loop
    from odnas.loop.store import load_run
    from odnas.testing import InProcessJobs

    a = Agent(tmp_path)
    lines: list[str] = []

    class GoesAway(DeviceLatencyBackend):
        """The real agent, which dies after two candidates were timed on it."""

        def measure(self, onnx_path, profile):
            if getattr(self, "n", 0) == 2:
                a.kill()  # tried: the device gone between two timings, mid-search
            self.n = getattr(self, "n", 0) + 1
            return super().measure(onnx_path, profile)

    backend = GoesAway(_spec(a.url, retries=1), token=TOKEN, log=lines.append)
    jobs = InProcessJobs(train=False)
    # The short protocol: the full one calibrates the agent's fresh cache for 30 s first.
    cfg = SearchConfig(profile=str(short_profile_file()), space="mlp", data="digits", trials=4, parallel=1,
                       run_dir=str(tmp_path / "run"), method="sobol", seed=0, scheduler=InProcessJobs.SCHEDULER)
    run_dir = create_run(cfg, schedulers=jobs.schedulers())
    with pytest.raises(DeviceUnreachable) as e:
        run_loop(run_dir, cost_backend=backend, schedulers=jobs.schedulers())
    assert "gave up" in str(e.value) and f"odnas resume {run_dir}" in str(e.value)
    # One failed attempt with its reason, then the stop: Ax's own retries of the deployment
    # do not wait for the device again.
    assert len(lines) == 1 and "trying again" in lines[0] and "Connection refused" in lines[0]
    run = load_run(run_dir)
    assert sum(r.state == "completed" for r in run.rows) == 2  # both timed candidates kept
    from odnas.cli import _note

    # The third, made but never timed: status says so, not "running" with nothing to show
    assert [_note(r, run.profile, driver=False) for r in run.rows if r.state == "running"] == [
        "not costed or launched yet; resume does it"]


# ---------------------------------------------------------------- the profile's device section


def test_a_profile_device_section_is_checked_and_kept_without_its_token(tmp_path):
    from odnas.errors import ProfileError
    from odnas.profiles import load_profile, profile_from_dict

    base = load_profile("cpu-mobile").to_dict()
    p = profile_from_dict({**base, "device": {"url": "http://127.0.0.1:8765/", "timeout_s": 60}})
    assert p.device.url == "http://127.0.0.1:8765" and p.device.token_env == "ODNAS_DEVICE_TOKEN"
    assert profile_from_dict(p.to_dict()).device == p.device  # stored in a run dir, read back
    assert "token" not in json.dumps(p.to_dict()).replace("token_env", "")  # the name of the variable only
    for bad, key in (({"url": "ftp://pi"}, "device.url"), ({"url": "http://pi:1", "token_env": "not a name"},
                                                           "device.token_env"),
                     ({"url": "http://pi:1", "timeout_s": 0}, "device.timeout_s"),
                     ({"url": "http://pi:1", "pasword": "x"}, "device.pasword")):
        with pytest.raises(ProfileError, match=re.escape(f"key '{key}'")):
            profile_from_dict({**base, "device": bad})


def test_device_flag_replaces_the_profiles_address_and_its_calibration():
    from odnas.profiles import CalibrationSpec, load_profile

    p = dataclasses.replace(load_profile("cpu-mobile"), calibration=CalibrationSpec(references={"floor": 0.1}))
    q = with_device(p, "http://[::1]:9000")
    assert q.device.url == "http://[::1]:9000" and q.calibration is None  # the device's figures need no mapping
    assert with_device(p, None) is p


def test_search_with_a_device_but_no_token_is_one_line_and_leaves_no_run(tmp_path):
    env_token = os.environ.pop("ODNAS_DEVICE_TOKEN", None)
    try:
        proc = run_cli("search", "--device", "http://127.0.0.1:9", "--run-dir", str(tmp_path / "run"), "--quiet")
    finally:
        if env_token is not None:
            os.environ["ODNAS_DEVICE_TOKEN"] = env_token
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "ODNAS_DEVICE_TOKEN" in lines[0], proc.stderr


def test_timings_on_one_device_are_queued_one_at_a_time(agent, quick, onnx_file):
    # Tried: two searches' timings sent to one device at once; the second waits for the first.
    backend = DeviceLatencyBackend(_spec(agent.url), token=TOKEN)
    prof = dataclasses.replace(_slow(quick), protocol=dataclasses.replace(_slow(quick).protocol, sessions=3))
    results, busy = [], []
    errors: list[Exception] = []

    def one() -> None:
        try:
            results.append(backend.measure(onnx_file, prof))
        except Exception as e:  # shown by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(2)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        busy.append(DeviceClient(agent.url, TOKEN).info()["busy_s"])  # the agent answers while it times
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    assert not errors and len(results) == 2 and any(b is not None for b in busy)
    assert wall >= 0.9 * sum(r.measure_s for r in results)  # one after the other, not side by side


def test_external_data_is_found_in_the_protobuf_itself_even_inside_a_subgraph():
    from onnx import TensorProto, helper, numpy_helper

    from odnas_device.agent import uses_external_data

    def tensor(external: bool):
        w = numpy_helper.from_array(np.ones((4,), np.float32), "w")
        if external:
            w.ClearField("raw_data")
            w.data_location = TensorProto.EXTERNAL
            e = w.external_data.add()
            e.key, e.value = "location", "weights.bin"
        return w

    def model(external: bool):
        inner = helper.make_graph([helper.make_node("Identity", ["w"], ["z"])], "then", [],
                                  [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])],
                                  initializer=[tensor(external)])
        node = helper.make_node("If", ["c"], ["y"], then_branch=inner, else_branch=inner)
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
        return helper.make_model(g).SerializeToString()

    assert uses_external_data(model(True)) and not uses_external_data(model(False))


def test_a_wrong_token_with_a_body_is_refused_not_mistaken_for_a_device_gone(agent, quick, onnx_file):
    # Tried: a whole timing request with a wrong token; the client hears 401, not a reset.
    backend = DeviceLatencyBackend(_spec(agent.url), token="wrong")
    backend._info = DeviceClient(agent.url, TOKEN).info()  # as if the token had changed since the check
    with pytest.raises(DeviceError, match="refused the token") as e:
        backend.measure(onnx_file, quick)
    assert not isinstance(e.value, DeviceUnreachable)


def test_a_model_over_the_agents_cap_is_refused_before_it_is_sent(tmp_path, quick, onnx_file):
    a = Agent(tmp_path, 0, "--max-mb", "0.01")  # tried: a 10 KiB cap, below the model and the reference
    try:
        with pytest.raises(DeviceError, match="larger --max-mb"):
            DeviceLatencyBackend(_spec(a.url), token=TOKEN).measure(onnx_file, quick)
    finally:
        a.kill()


def test_a_candidate_the_device_cannot_time_fails_alone_and_the_search_goes_on(tmp_path, short_profile_file):
    from odnas.loop.config import SearchConfig
    from odnas.loop.driver import create_run, run_loop
    from odnas.loop.store import load_run
    from odnas.testing import InProcessJobs
    from onnx import TensorProto, helper, save

    a = Agent(tmp_path)
    odd = tmp_path / "odd.onnx"  # valid ONNX, with an op this onnxruntime does not have
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 1, 8, 8]) for n in ("input", "logits")]
    save(helper.make_model(helper.make_graph([helper.make_node("Foo", ["input"], ["logits"], domain="com.example")],
                                             "odd", io[:1], io[1:]),
                           opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]),
         str(odd))

    class OneBad(DeviceLatencyBackend):
        """The real agent; the second candidate reaches it as a model its onnxruntime
        cannot run, as an older onnxruntime on a device meets a newer op."""

        def measure(self, onnx_path, profile):
            self.n = getattr(self, "n", 0) + 1
            return super().measure(odd if self.n == 2 else onnx_path, profile)  # tried: refused mid-search

    jobs = InProcessJobs(train=False)
    cfg = SearchConfig(profile=str(short_profile_file()), space="mlp", data="digits", trials=3, parallel=1,
                       run_dir=str(tmp_path / "run"), method="sobol", seed=0, scheduler=InProcessJobs.SCHEDULER)
    run_dir = create_run(cfg, schedulers=jobs.schedulers())
    try:
        run_loop(run_dir, cost_backend=OneBad(_spec(a.url), token=TOKEN), schedulers=jobs.schedulers())
    finally:
        a.kill()
    rows = load_run(run_dir).rows
    failed = [r for r in rows if r.state == "failed"]
    assert sum(r.state == "completed" for r in rows) == 3 and len(failed) == 1
    assert "could not time it" in failed[0].reason and "Foo" in failed[0].reason


def test_doctor_calls_a_device_reproducible_only_when_no_model_moved_past_its_error_bars():
    from odnas.cost.doctor import format_device_report

    def report(median, worst, z):
        return {"url": "http://127.0.0.1:1", "round_trip_ms": 1.0,
                "device": {"device": "d", "cpu_model": "c", "cores": 2, "machine": "x86_64", "ort_version": "1",
                           "providers": ["CPUExecutionProvider"], "version": "1"},
                "retest": {"median_abs_diff": median, "max_abs_diff": worst, "max_z": z,
                           "seconds_per_candidate": 1.0, "latency_ms": [[1.0, 1.0]] * 3}}

    assert "times reproducibly" in format_device_report(report(0.005, 0.02, 1.0))
    moved = format_device_report(report(0.005, 0.111, 4.1))  # the median low, one model 4.1 SE apart
    assert "times reproducibly" not in moved and "4.1 standard errors apart (the largest move 11.1%)" in moved
    assert "over 5%" in format_device_report(report(0.08, 0.1, 2.0))
