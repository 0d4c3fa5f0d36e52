"""The agent's command-line options and defaults: standard library only, so ``odnas
--help`` can offer ``odnas device serve`` without loading numpy or onnxruntime."""

from __future__ import annotations

import argparse

DEFAULT_PORT = 8765
DEFAULT_MAX_MB = 64.0
#: Longest a client may ask one timing to take (``protocol.max_time_s``), in seconds.
MAX_MEASURE_S = 120.0
TOKEN_ENV = "ODNAS_DEVICE_TOKEN"


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bind", default="127.0.0.1",
                   help="address to listen on; loopback unless you say otherwise (0.0.0.0: every interface "
                        "of the device, for a search on another machine of your lab network)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on (0: any free one)")
    p.add_argument("--max-mb", type=float, default=DEFAULT_MAX_MB,
                   help="largest request taken, in MiB (a model and the reference, base64)")
    p.add_argument("--max-measure-s", type=float, default=MAX_MEASURE_S,
                   help="longest timing a client may ask for (its protocol's max_time_s)")
