"""``iwin-seg demo``: the Gradio page (also ``examples/space/app.py``). Gradio is imported only by
:func:`build_app` / :func:`serve`."""
from .session import (
    MAX_PIXELS,
    PROTOCOLS,
    DemoResult,
    DemoSession,
    ModelChoice,
    PhotoError,
    build_app,
    class_map_picture,
    confidence_picture,
    default_choices,
    info_markdown,
    legend_html,
    overlay_picture,
    read_photo,
    registered_choices,
    serve,
)

__all__ = ["MAX_PIXELS", "ModelChoice", "DemoResult", "DemoSession", "PhotoError", "PROTOCOLS", "default_choices",
           "registered_choices", "read_photo", "overlay_picture", "class_map_picture", "confidence_picture",
           "legend_html", "info_markdown", "build_app", "serve"]
