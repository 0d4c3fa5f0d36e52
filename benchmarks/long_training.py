"""The default search's space with room for long trainings: epochs up to 12.

For the benchmark of early stopping on trainings of many epochs
(``python benchmarks/run.py early-stopping-long``), where the shipped space stops
at 4 epochs:

    odnas search --profile cpu-mobile --space benchmarks/long_training.py:LongMobileCNN --fixed epochs=10
"""

from __future__ import annotations

from odnas.spaces.base import Range
from odnas.spaces.mobile_cnn import MobileCNNSpace


class LongMobileCNN(MobileCNNSpace):
    name = "mobile-cnn-long"
    description = "the default search's MobileNet-style space, epochs 1-12"
    specs = tuple(Range("epochs", 1, 12, "int") if s.name == "epochs" else s for s in MobileCNNSpace.specs)
