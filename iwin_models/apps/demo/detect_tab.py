"""The detection tab of the demo page: its components (:func:`build`: the photo, the detector menu, the score
threshold, the overlay, the detected classes with their counts, the downloads), its events, and their handlers
(:func:`handle_run`: Detect, the model run once with its own threshold; :func:`handle_render`: the overlay, counts
and downloads again at another score threshold, no model run). Gradio is passed in (``gr``) by
:func:`iwin_models.apps.demo.app.build_app`; nothing here imports it.
"""
from __future__ import annotations

import html

from .detections import DetectionResult, counts_html, detection_downloads, detection_info, overlay, run_detection
from .gradio_env import accepted
from .photos import PhotoError, photo_file
from .session import KEEP_RESULTS, DemoSession

__all__ = ["LABEL", "KIND", "INTRO", "CSS", "THRESHOLD", "build", "handle_run", "handle_render"]

LABEL = "Detection"
KIND = "detector"  # the choices this tab offers
INTRO = "In **Detection**, pick a COCO detector and press **Detect**."
THRESHOLD = 0.3  # the score threshold's default
CSS = """
#det_counts ul {list-style: none; padding: 0; margin: 0; columns: 2;}
#det_counts li {margin: 2px 0; white-space: nowrap;}
#det_counts .total {margin: 1.9em 0 4px 0; font-weight: 600;}
"""


def build(gr, session: DemoSession) -> dict:
    """The tab's components (by name) and their events."""
    ui = _layout(gr, session)
    _wire(gr, session, ui)
    return ui


def _layout(gr, session: DemoSession) -> dict:
    """The components, by name (``det_`` first: the page's other tabs have a photo, a status line, ...)."""
    from ...data import SAMPLE_IMAGE

    ui = {}
    with gr.Row():
        with gr.Column(scale=1):
            ui["det_photo"] = gr.Image(label="Photo", type="filepath", image_mode=None,
                                       sources=["upload", "clipboard"], elem_id="det_photo", height=320)
            gr.Examples(examples=[[str(SAMPLE_IMAGE)]], inputs=[ui["det_photo"]], label="Sample")
            ui["det_model"] = gr.Dropdown(session.labels(KIND), value=session.default_for(KIND), label="Detector",
                                          elem_id="det_model")
            ui["det_run"] = gr.Button("Detect", variant="primary", elem_id="det_run")
            ui["det_status"] = gr.Markdown("", elem_id="det_status", elem_classes=["iwin-status"])
        with gr.Column(scale=2):
            ui["det_note"] = gr.Markdown("", elem_id="det_note", elem_classes=["iwin-note"])  # random weights
            ui["det_info"] = gr.Markdown("", elem_id="det_info")
            ui["det_overlay"] = gr.Image(label="Detections", type="numpy", format="png", interactive=False,
                                         elem_id="det_overlay")
            ui["det_threshold"] = gr.Slider(0, 1, value=THRESHOLD, step=0.05, label="Score threshold",
                                            elem_id="det_threshold")
            ui["det_counts"] = gr.HTML("", label="Detected classes (count)", show_label=True, container=True,
                                       elem_id="det_counts", elem_classes=["iwin-classes"])
            ui["det_downloads"] = gr.File(label="Downloads (full size: overlay PNG, COCO-style JSON)",
                                          file_count="multiple", interactive=False, elem_id="det_downloads")
    ui["det_state"] = gr.State(None)  # the key of the visitor's last result (DemoSession.keep)
    return ui


def _wire(gr, session: DemoSession, ui: dict) -> None:
    """The events: Detect runs the model (one at a time, queued with the other tabs' runs); the threshold only
    filters the kept detections. preprocess=False as in the segmentation tab: the handler reads the upload."""
    run_outputs = [ui[k] for k in ("det_overlay", "det_counts", "det_downloads", "det_info", "det_note",
                                   "det_status", "det_state")]
    ui["det_run"].click(lambda *a: handle_run(gr, session, *a), preprocess=False, concurrency_id="inference",
                        concurrency_limit=1, api_name="detect", outputs=run_outputs,
                        inputs=[ui[k] for k in ("det_photo", "det_model", "det_threshold")])
    ui["det_threshold"].release(lambda *a: handle_render(gr, session, *a), concurrency_id="render",
                                concurrency_limit=1, api_name="threshold",
                                outputs=[ui[k] for k in ("det_overlay", "det_counts", "det_downloads")],
                                inputs=[ui["det_state"], ui["det_threshold"]])


def _shown(session: DemoSession, result: DetectionResult, threshold: float) -> tuple:
    """The overlay, the counts and the downloads of ``result`` at ``threshold``."""
    files = [str(p) for p in detection_downloads(session, result, threshold)]
    return overlay(result, threshold), counts_html(result.shown, threshold), files


def handle_run(gr, session: DemoSession, photo, model_key, threshold) -> tuple:
    """Detect: the outputs of a result (and its model's note), or on a photo that cannot be read the outputs
    cleared, the reason in the status line under the button and a toast (the server goes on serving)."""
    try:
        path, name = photo_file(photo, session.new_folder)
        result = run_detection(session, path, model_key, name=name)
        shown = _shown(session, result, float(threshold))
    except (ValueError, TypeError, OSError, RuntimeError) as e:
        message = str(e) if isinstance(e, PhotoError) else f"cannot detect objects in this photo: {e}"
        gr.Warning(message, **accepted(gr.Warning, title="Cannot detect"))
        return None, "", None, "", "", f"**Error:** {html.escape(message)}", None
    note = f"**Warning:** {html.escape(result.note)}" if result.note else ""
    return (*shown, detection_info(result), note, "", session.keep(result))


def handle_render(gr, session: DemoSession, key: str | None, threshold) -> tuple:
    """The overlay, counts and downloads again at another score threshold (no model run); unchanged, with a
    toast, once the result is no longer kept."""
    result = session.result(key)
    if result is None:
        if key:
            gr.Warning(f"this result is no longer kept (the server keeps the last {KEEP_RESULTS}): press Detect again")
        return gr.update(), gr.update(), gr.update()
    return _shown(session, result, float(threshold))
