"""Gradio as the demo page uses it: imported with its telemetry off (:func:`import_gradio`), and the keyword
arguments a Gradio function of this version takes (:func:`accepted`)."""
from __future__ import annotations

import inspect
import os

__all__ = ["import_gradio", "accepted"]


def import_gradio():
    """Gradio, imported with its analytics, version check and Hugging Face telemetry off (read at import and
    at ``Blocks()``: set before both)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    import gradio as gr

    return gr


def accepted(function, **kwargs) -> dict:
    """Those of ``kwargs`` that ``function`` takes (Gradio 5 and 6 differ: theme and css moved to launch())."""
    parameters = inspect.signature(function).parameters
    return {k: v for k, v in kwargs.items() if k in parameters}
