"""Fast paths and their switches, kept out of the model files (as ``timm.layers`` does).

``config`` holds the global switches (which fast twins a conversion installs) and the dynamic-export
context; ``twin`` the base of the CPU fast twins; ``iwin_cpu`` the twins of Iwin's patch embedding and
block; ``upernet_cpu`` the twin of the UPerNet decoder; ``linear`` the oneDNN linear layer;
``interleave`` the windows made without the padded map; ``pool`` the adaptive pooling that exports
size-free.
"""
from .config import FAST_PATHS, dynamic_tracing, fast_paths, is_dynamic_tracing, set_fast_path, use_fast_path
from .linear import linear, use_onednn_linears

__all__ = ["FAST_PATHS", "dynamic_tracing", "fast_paths", "is_dynamic_tracing", "set_fast_path", "use_fast_path",
           "linear", "use_onednn_linears"]
