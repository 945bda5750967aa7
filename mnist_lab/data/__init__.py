"""The data: MNIST's files (``mnist_files``: found, fetched, verified), parsed into cached
tensors (``mnist_arrays``), and the Lightning data module that holds them on the training device
and splits them (``datamodule``; its ``split_tensors`` is the split every run and pack trains
on). ``python -m mnist_lab.data`` fetches the files.

``mnist_lab.data.MNISTDataModule`` is the name ``conf/data/mnist.yaml`` and every run config
written so far use; it is looked up here on first use, so that reading the files alone
(``mnist_files``) does not import Lightning.
"""


def __getattr__(name: str):
    # PEP 562: the data module's names, resolved only when asked for (Lightning is slow to import)
    if name.startswith("__"):
        raise AttributeError(name)
    import importlib

    try:
        return getattr(importlib.import_module("mnist_lab.data.datamodule"), name)
    except AttributeError:
        raise AttributeError(f"module 'mnist_lab.data' has no attribute {name!r}") from None
