"""Fast paths and their switches, kept out of the model files (as ``timm.layers`` does).

``config`` holds the global switches and the one decision of when a fast twin runs; ``linear`` the
oneDNN linear layer; ``interleave`` the windows made without the padded map; ``iwin_cpu`` the fast
twins of Iwin's patch embedding and block; ``pool`` the adaptive pooling that exports size-free.
"""
from .config import FAST_PATHS, fast_path, fast_paths, is_traced, set_fast_path, use_fast_path
from .linear import linear, use_onednn_linears

__all__ = ["FAST_PATHS", "fast_path", "fast_paths", "is_traced", "set_fast_path", "use_fast_path", "linear",
           "use_onednn_linears"]
