"""odnas: on-device, deployment-aware neural architecture search.

Import what you need from the submodules (``odnas.search``, ``odnas.profiles``,
``odnas.export``...); this package imports nothing heavy on its own.
"""

__version__ = "0.1.0"
