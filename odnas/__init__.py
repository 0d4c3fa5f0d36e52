"""odnas: on-device, deployment-aware neural architecture search.

``odnas.api`` holds the public Python names (``search``, ``load_run``, ``export_trial``...);
``docs/design.md`` maps the package's layers. This package imports nothing on its own.
"""

__version__ = "0.1.0"
