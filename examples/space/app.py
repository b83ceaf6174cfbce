"""The iwin-seg demo page as a Hugging Face Space (``sdk: gradio``): the same app as ``iwin-seg demo``.

The page is built by the package (:func:`iwin_models.apps.demo.build_app`); this file only chooses what a Space
serves. On a Space (``SPACE_ID`` set) the registered segmenters and released detectors download their
official weights on first use (``IWIN_DEMO_DOWNLOAD=0`` turns that off); elsewhere they use the torch.hub cache,
or random weights, said on the page. Spaces run ``python app.py``; ``GRADIO_SERVER_NAME`` /
``GRADIO_SERVER_PORT`` say where to serve.
Run it locally: ``pip install -r requirements.txt && python app.py``.
"""
import os

from iwin_models.apps.demo import DemoSession, build_app, default_choices, serve

download = os.environ.get("IWIN_DEMO_DOWNLOAD", "1" if os.environ.get("SPACE_ID") else "0") == "1"
choices, default = default_choices(os.environ.get("IWIN_DEMO_MODEL"), download=download)
demo = build_app(DemoSession(choices, default=default))

if __name__ == "__main__":
    serve(demo, host=None, port=None)
