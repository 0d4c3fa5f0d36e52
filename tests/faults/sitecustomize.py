"""Fault injection for training jobs, used only by tests/test_faults.py.

Tests put this folder on PYTHONPATH; TorchX's local scheduler passes the environment
on, so each ``python -m odnas.jobs.trial`` job (or ``odnas.jobs.worker``, whose forked
children run the trials) imports this module at start-up. Jobs claim
slots in ``ODNAS_TEST_FAULT_DIR`` in the order they reach training; job *i* suffers
fault *i* of ``ODNAS_TEST_FAULTS`` (comma-separated), later jobs train normally.
The faults are real: a raise, a failed allocation under a memory limit, NaN weights
(the training's own check fires), an exit without a result, a hang, a SIGKILL, and
(warm workers only) the worker SIGKILLed while its child trains.
"""

import os
import sys

# A fresh trial job, or a warm worker: its forked trial children call the patched ``fit``
# (the worker's own warm-up fit does not go through ``fit``), so os.getpid() below is the
# child's, the pid in the trial's job.json.
_JOBS = (["-m", "odnas.jobs.trial"], ["-m", "odnas.jobs.worker"])
if os.environ.get("ODNAS_TEST_FAULTS") and sys.orig_argv[1:3] in _JOBS:
    import odnas.jobs.train as _train

    _real_fit = _train.fit

    def _claim() -> str | None:
        faults = os.environ["ODNAS_TEST_FAULTS"].split(",")
        folder = os.environ["ODNAS_TEST_FAULT_DIR"]
        for i, kind in enumerate(faults):
            try:
                fd = os.open(os.path.join(folder, f"slot-{i}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                continue
            os.write(fd, f"{os.getpid()} {kind}".encode())
            os.close(fd)
            return kind
        return None

    def fit(model, data, *args, **kwargs):
        kind = _claim()
        if kind == "raise":
            raise RuntimeError("injected failure")
        if kind == "oom":
            import resource

            import torch

            vm_kb = int([ln for ln in open("/proc/self/status") if ln.startswith("VmSize")][0].split()[1])
            limit = vm_kb * 1024 + (256 << 20)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            torch.empty(1 << 31)  # 8 GiB of float32: more than the job may have
        if kind == "nan":
            import torch

            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))
        if kind == "exit0":
            os._exit(0)
        if kind == "hang":
            import time

            time.sleep(3600)
        if kind == "kill":
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "slow":  # trains normally, 4 s late: long enough for a poll to see it training
            import time

            time.sleep(4)
        if kind == "killworker":  # a warm worker SIGKILLed mid-trial: its child dies with it
            import signal
            import time

            os.kill(os.getppid(), signal.SIGKILL)
            time.sleep(60)
        return _real_fit(model, data, *args, **kwargs)

    _train.fit = fit

# A warm worker whose preload stalls (a data set on a hung network mount, say):
# ``ODNAS_TEST_WORKER_PRELOAD=hang``.
if os.environ.get("ODNAS_TEST_WORKER_PRELOAD") == "hang" and sys.orig_argv[1:3] == ["-m", "odnas.jobs.worker"]:
    import odnas.data as _data

    def _stalled_load_data(*args, **kwargs):
        import time

        time.sleep(3600)

    _data.load_data = _stalled_load_data
