"""rtdenoise: real-time causal denoising of fluorescence recordings.

``import rtdenoise`` stays light: torch, zmq and the optional backends are imported
where they are used.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "denoise"]


# Imported now (numpy only), not wrapped lazily: the first import of the submodule
# rtdenoise.denoise sets the package's attribute `denoise` to that module, so a lazy wrapper
# was replaced by a module once anything (the service, the CLI) had imported it, and
# `rtdenoise.denoise(movie)` then failed with "'module' object is not callable". The module's
# other names: `from rtdenoise.denoise import denoise_file` (not `rtdenoise.denoise.denoise_file`).
from rtdenoise.denoise import denoise  # noqa: E402
