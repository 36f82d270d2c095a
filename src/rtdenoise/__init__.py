"""rtdenoise: real-time causal denoising of fluorescence recordings.

``import rtdenoise`` stays light: torch, zmq and the optional backends are imported
where they are used.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "denoise"]


def denoise(frames, *, model=None, **kwargs):
    """Denoise a recording offline; see :func:`rtdenoise.denoise.denoise`."""
    from rtdenoise.denoise import denoise as _denoise

    return _denoise(frames, model=model, **kwargs)
