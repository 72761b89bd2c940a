"""unetcli: semantic segmentation with a U-Net from the command line."""

__version__ = "0.1.0"
