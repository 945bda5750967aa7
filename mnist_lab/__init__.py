"""MNIST studies with PyTorch Lightning and Hydra (README.md)."""

import time
from pathlib import Path

STARTED = time.perf_counter()  # the first import of the package: a sweep's start-up counts from here (sweep_clock)
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the Hydra configs of train, evaluate and predict
NUM_CLASSES = 10  # the digits 0-9
