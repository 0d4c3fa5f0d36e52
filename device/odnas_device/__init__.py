"""odnas-device: the small agent that times ONNX models on a phone or a board for an odnas search.

It needs Python, numpy and onnxruntime, and nothing from torch, Ax or Lightning:
``pip install odnas-device`` (from ``device/`` in odnas's source) on the device, then
``odnas-device serve``. ``docs/device.md`` in odnas's source walks through it.
"""

__version__ = "0.1.0"
#: The agent's HTTP API version; a client refuses an agent with another one.
API_VERSION = 1
