"""Batch mapping, depth and deconvolution of saved acquisitions on a Dask cluster.

``livepsf map|depth|deconvolve INPUT... --scheduler tcp://host:8786`` (an existing cluster) or
``--scheduler local --workers N`` (a ``LocalCluster``). Needs the optional extra ``livepsf[dask]``;
see :mod:`livepsf.batch.engine` for the design and why Dask is optional.

- :mod:`~livepsf.batch.inputs`: files, folders of TIFF/OME-TIFF, lazy per-frame reads.
- :mod:`~livepsf.batch.tasks`: the per-frame work on a worker.
- :mod:`~livepsf.batch.outputs`: the outputs, their settings and finished-output lookup.
- :mod:`~livepsf.batch.engine`: :func:`run_batch` on a Dask client, progress, resume.
"""

from livepsf.batch.engine import BatchReport, SourceResult, connect, local_cluster, run_batch
from livepsf.batch.inputs import FrameSource, expand_inputs, open_source, read_frame
from livepsf.batch.outputs import BatchOptions

__all__ = [
    "BatchOptions",
    "BatchReport",
    "FrameSource",
    "SourceResult",
    "connect",
    "expand_inputs",
    "local_cluster",
    "open_source",
    "read_frame",
    "run_batch",
]
