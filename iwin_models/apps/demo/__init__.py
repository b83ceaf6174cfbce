"""``iwin-seg demo``: the Gradio page (also ``examples/space/app.py``), one module per concern.

:mod:`.choices` (the model and protocol menus), :mod:`.photos` (reading an upload), :mod:`.pictures` (overlay,
class map, confidence, legend, preview), :mod:`.session` (:class:`DemoSession`: models, inference, kept results,
downloads), :mod:`.detections` (a photo's detections: run, filtered by score, counted, downloaded),
:mod:`.segment_tab` and :mod:`.detect_tab` (the tabs: components, events, handlers), :mod:`.app` (:func:`build_app`
and :func:`serve`; the page's tabs), :mod:`.gradio_env` (Gradio imported with telemetry off). Gradio is imported
only by :func:`build_app` / :func:`serve`.
"""
from .app import build_app, serve
from .choices import KINDS, PROTOCOLS, ModelChoice, default_choices, registered_choices
from .detections import DetectionResult, class_counts, counts_html, detection_downloads, run_detection
from .photos import MAX_PIXELS, PhotoError, read_photo
from .pictures import class_map_picture, confidence_picture, legend_html, overlay_picture
from .segment_tab import info_markdown
from .session import DemoResult, DemoSession

__all__ = ["MAX_PIXELS", "ModelChoice", "DemoResult", "DemoSession", "PhotoError", "KINDS", "PROTOCOLS",
           "DetectionResult", "run_detection", "class_counts", "counts_html", "detection_downloads", "default_choices",
           "registered_choices", "read_photo", "overlay_picture", "class_map_picture", "confidence_picture",
           "legend_html", "info_markdown", "build_app", "serve"]
