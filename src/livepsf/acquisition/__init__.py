"""Acquisition: the live loop, recording frames to OME-TIFF, and the background deconvolution queue."""
