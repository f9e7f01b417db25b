"""livepsf's autofocus as the autofocus step of a pymmcore-plus MDA.

A ``useq.MDASequence`` with an ``autofocus_plan`` (e.g. ``useq.AxesBasedAF(axes=("p",))``: at every
new position; ``("t",)``: every time point) produces events whose action is ``useq.HardwareAutofocus``.
pymmcore-plus's :class:`~pymmcore_plus.mda.MDAEngine` hands them to the core's autofocus device
(``fullFocus``), which a microscope without one (and the simulator) cannot serve. The public extension
point is an engine subclass: :class:`LivePSFAutofocusEngine` runs :func:`~livepsf.acquisition.autofocus.
autofocus` for those events instead, keeps the correction per position exactly as the base engine
keeps a hardware autofocus's (added to the Z of that position's later events), and records it in the
metadata of every following frame of that position under ``"livepsf_autofocus"``.

Enable it explicitly (nothing swaps the engine behind the user's back)::

    from livepsf.acquisition.mda_autofocus import LivePSFAutofocusEngine
    engine = LivePSFAutofocusEngine(core, mapper=mapper, calibration=cal)
    core.register_mda_engine(engine)
    core.run_mda(useq.MDASequence(stage_positions=[...], time_plan={...},
                                  autofocus_plan=useq.AxesBasedAF(axes=("p",))))
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from pymmcore_plus.mda import MDAEngine
from useq import HardwareAutofocus, MDAEvent

from livepsf.acquisition.autofocus import AutofocusResult, autofocus

__all__ = ["METADATA_KEY", "LivePSFAutofocusEngine"]

logger = logging.getLogger("livepsf.autofocus")

#: Frame-metadata key of the autofocus record.
METADATA_KEY = "livepsf_autofocus"


class LivePSFAutofocusEngine(MDAEngine):
    """An :class:`~pymmcore_plus.mda.MDAEngine` whose autofocus step is :func:`livepsf.autofocus`.

    Parameters
    ----------
    mmc
        The core to run on (a ``CMMCorePlus`` or the simulator's ``UniMMCore``).
    mapper, calibration, roi
        Passed to :func:`~livepsf.acquisition.autofocus.autofocus` (mapper: the default model when
        None; calibration: None for the lens-free path).
    autofocus_options
        Further keyword arguments for :func:`~livepsf.acquisition.autofocus.autofocus`.
    **engine_options
        Passed to :class:`~pymmcore_plus.mda.MDAEngine`.

    Attributes
    ----------
    results
        Every autofocus run of the last sequence, in order, as ``(event index, AutofocusResult)``.
    """

    def __init__(
        self,
        mmc: Any,
        *,
        mapper: Callable[[np.ndarray], Any] | None = None,
        calibration: Any = None,
        roi: Sequence[int] | None = None,
        autofocus_options: dict[str, Any] | None = None,
        **engine_options: Any,
    ) -> None:
        super().__init__(mmc, **engine_options)
        if mapper is None:
            from livepsf.mapping import PSFMapper
            from livepsf.net import load_model

            mapper = PSFMapper(load_model("default"), stride_px=64)
        self.mapper = mapper
        self.calibration = calibration
        self.roi = roi
        self.autofocus_options = dict(autofocus_options or {})
        self.results: list[tuple[dict[str, int], AutofocusResult]] = []
        self._last_result: dict[int | None, AutofocusResult] = {}

    def setup_sequence(self, sequence: Any) -> Any:
        self.results.clear()
        self._last_result.clear()
        return super().setup_sequence(sequence)

    def exec_event(self, event: MDAEvent) -> Iterable[Any]:
        """Run livepsf's autofocus for ``HardwareAutofocus`` events; everything else as the base engine."""
        if not isinstance(getattr(event, "action", None), HardwareAutofocus):
            return super().exec_event(event)
        p_idx = event.index.get("p", None)
        result = autofocus(self.mmcore, mapper=self.mapper, calibration=self.calibration, roi=self.roi,
                           **self.autofocus_options)
        self.results.append((dict(event.index), result))
        self._last_result[p_idx] = result
        # Same bookkeeping as a hardware autofocus: later Z positions of this position are corrected.
        self._z_correction[p_idx] = result.correction_um + self._z_correction.get(p_idx, 0.0)
        self._af_succeeded = result.converged
        (logger.info if result.converged else logger.warning)(
            "MDA autofocus at %s: %s", dict(event.index), result.summary())
        return ()

    def get_frame_metadata(self, event: MDAEvent, *args: Any, **kwargs: Any) -> Any:
        """The base engine's metadata plus the autofocus record of the frame's position."""
        meta = super().get_frame_metadata(event, *args, **kwargs)
        p_idx = event.index.get("p", None)
        result = self._last_result.get(p_idx)
        if result is not None:
            meta[METADATA_KEY] = {**result.as_metadata(),
                                  "z_correction_um": round(float(self._z_correction.get(p_idx, 0.0)), 4)}
        return meta
