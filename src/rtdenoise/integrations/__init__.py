"""Microscope and acquisition software on the service's wire.

- :mod:`rtdenoise.integrations.pycromanager`: an image processor for pycro-manager's
  ``Acquisition(image_process_fn=...)`` that has each image denoised by a running service.
"""
