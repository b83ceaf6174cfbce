"""The demo page as Gradio wiring: :func:`build_app` (the page: its tabs, theme and queue) and :func:`serve`.

Gradio is imported here, lazily (``import iwin_models.apps.demo`` does not import it): ``pip install
'iwin-models[demo]'``. Nothing is fetched from outside the machine: Gradio's analytics and version check are off
(``GRADIO_ANALYTICS_ENABLED=False``, ``analytics_enabled=False``, and so Hugging Face telemetry), the theme's
fonts are the system's, the page loads no CDN script, and the server never shares a link (``share=False``).

The page's tabs are :data:`TABS`: each a module with ``LABEL``, ``KIND`` (the kind of model it offers), ``INTRO``,
``CSS`` and ``build(gr, session)`` (:mod:`.segment_tab`, :mod:`.detect_tab`). Another tab is a new module and its
line in :data:`TABS`. The page shows the tabs whose kind the session has models of: one without a tab bar.
"""
from __future__ import annotations

from . import detect_tab, segment_tab
from .gradio_env import accepted, import_gradio
from .session import DemoSession

__all__ = ["TITLE", "TABS", "HOST", "PORT", "MAX_FILE_SIZE", "CSS", "shown_tabs", "build_app", "serve"]

TITLE = "Iwin Transformer: semantic segmentation (ADE20K) and object detection (COCO)"
TABS = (segment_tab, detect_tab)  # those with models: one gr.Tab each, in this order (one alone: no tab bar)
HOST, PORT = "127.0.0.1", 7860  # where serve() serves by default (this machine only)
MAX_FILE_SIZE = "100mb"  # Gradio refuses larger uploads
FONT = ["system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif"]
FONT_MONO = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "Liberation Mono", "monospace"]
CSS = """
.iwin-status p, .iwin-note p {font-weight: 600; border-radius: 6px; padding: 6px 10px;}
.iwin-status p {color: #b91c1c; background: #fef2f2; border: 1px solid #fca5a5;}
.iwin-note p {color: #92400e; background: #fffbeb; border: 1px solid #fcd34d;}
.iwin-classes .swatch {display: inline-block; width: 14px; height: 14px; margin-right: 6px; vertical-align: -2px;
                       border: 1px solid #444;}
""" + "".join(tab.CSS for tab in TABS)


def _style(gr) -> dict:
    """The page's theme (system fonts only: nothing loaded from outside) and CSS."""
    theme = gr.themes.Default(font=FONT, font_mono=FONT_MONO)
    return dict(theme=theme, css=CSS)


def build_app(session: DemoSession | None = None, *, title: str = TITLE):
    """The demo page as a ``gr.Blocks`` (not served: see :func:`serve`); ``session`` (default: the registered
    segmenters and released detectors) holds the models. The session is ``app.iwin_session``."""
    gr = import_gradio()
    session = session if session is not None else DemoSession()
    style = _style(gr)
    at_launch = int(gr.__version__.split(".")[0]) >= 6  # Gradio 6 takes theme and css at launch(), 5 at Blocks()
    blocks_kwargs = {} if at_launch else style
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600), **blocks_kwargs) as app:
        tabs = shown_tabs(session)
        gr.Markdown(f"## {title}\n" + " ".join(tab.INTRO for tab in tabs))
        ui = _tabs(gr, session, tabs)
    app.queue(default_concurrency_limit=1)
    app.iwin_session, app.iwin_ui = session, ui
    app.iwin_launch = style if at_launch else {}
    return app


def shown_tabs(session: DemoSession) -> list:
    """The tabs of :data:`TABS` whose kind of model ``session`` has."""
    return [tab for tab in TABS if session.labels(tab.KIND)]


def _tabs(gr, session: DemoSession, tabs: list) -> dict:
    """The components of ``tabs``, by name (one tab: no tab bar)."""
    if len(tabs) == 1:
        return tabs[0].build(gr, session)
    ui = {}
    for tab in tabs:
        with gr.Tab(tab.LABEL):
            ui.update(tab.build(gr, session))
    return ui


def serve(app, host: str | None = HOST, port: int | None = PORT, *, max_file_size: str | int = MAX_FILE_SIZE,
          block: bool = True, quiet: bool = True) -> str:
    """Serve ``app`` (from :func:`build_app`) on ``host``:``port`` (None: Gradio's default, or
    ``GRADIO_SERVER_NAME``/``GRADIO_SERVER_PORT`` as a Space sets them): never a share link, errors shown, uploads
    up to ``max_file_size``. Returns the local URL; with ``block`` it serves until Ctrl-C first."""
    gr = import_gradio()
    options = dict(server_name=host, server_port=port, share=False, show_error=True, max_file_size=max_file_size,
                   ssr_mode=False, quiet=quiet, prevent_thread_lock=True, **getattr(app, "iwin_launch", {}))
    app.launch(**accepted(gr.Blocks.launch, **options))
    url = app.local_url
    if block:
        print(f"iwin-seg demo: serving {url} (Ctrl-C stops)", flush=True)
        app.block_thread()
    return url
