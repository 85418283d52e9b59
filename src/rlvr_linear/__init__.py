"""rlvr-linear: measure, forecast and exploit the linear dynamics of RLVR training."""

__version__ = "0.1.0"
