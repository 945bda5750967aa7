"""MNIST studies with PyTorch Lightning and Hydra (README.md)."""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the Hydra configs of train, evaluate and predict
NUM_CLASSES = 10  # the digits 0-9
