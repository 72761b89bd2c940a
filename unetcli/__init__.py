"""unetcli: semantic segmentation with a U-Net, from the command line and from Python.

    import unetcli
    model = unetcli.load("runs/cells")
    mask = model.predict(image)

Importing unetcli is cheap and changes no global state: torch and the rest load at the first call.
"""

__version__ = "0.1.0"


def load(path, **options):
    """A trained model folder (or run folder), ready to segment numpy images. See `unetcli.api.Model`."""
    from .api import load as _load

    return _load(path, **options)


def train(data=None, **options):
    """Train as `unetcli train` does; yields its events. See `unetcli.api.train`."""
    from .api import train as _train

    return _train(data, **options)


__all__ = ["__version__", "load", "train"]
