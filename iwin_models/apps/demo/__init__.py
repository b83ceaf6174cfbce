"""``iwin-seg demo``: the Gradio page (also ``examples/space/app.py``), one module per concern.

:mod:`.choices` (the model and protocol menus), :mod:`.photos` (reading an upload), :mod:`.pictures` (overlay,
class map, confidence, legend, preview), :mod:`.session` (:class:`DemoSession`: models, inference, kept results,
downloads), :mod:`.segment_tab` (the segmentation tab: components, events, handlers), :mod:`.app` (:func:`build_app`
and :func:`serve`; the page's tabs), :mod:`.gradio_env` (Gradio imported with telemetry off). Gradio is imported
only by :func:`build_app` / :func:`serve`.
"""
from .app import build_app, serve
from .choices import PROTOCOLS, ModelChoice, default_choices, registered_choices
from .photos import MAX_PIXELS, PhotoError, read_photo
from .pictures import class_map_picture, confidence_picture, legend_html, overlay_picture
from .segment_tab import info_markdown
from .session import DemoResult, DemoSession

__all__ = ["MAX_PIXELS", "ModelChoice", "DemoResult", "DemoSession", "PhotoError", "PROTOCOLS", "default_choices",
           "registered_choices", "read_photo", "overlay_picture", "class_map_picture", "confidence_picture",
           "legend_html", "info_markdown", "build_app", "serve"]
