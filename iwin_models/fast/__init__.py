"""The CPU speed-ups, as one explicit conversion (as ``timm.utils.reparameterize_model`` is for timm).

:func:`optimize_for_cpu` puts the fast twins of :mod:`.iwin_cpu` (patch embedding, block) and :mod:`.upernet_cpu`
(the UPerNet decoder) in place of the plain modules; :func:`restore_plain` puts the plain ones back;
:func:`with_cpu_twins` is the one policy of when the package's entry points convert. Which tricks a conversion
installs follows the switches of :mod:`.config` (``IWIN_FAST_PATH=0``, ``IWIN_CHUNKED=0``, ...).
"""
from .config import FAST_PATHS, fast_paths, set_fast_path, use_fast_path
from .linear import use_onednn_linears
from .optimize import CPU_TWINS, optimize_for_cpu, restore_plain, shared_weights_copy, with_cpu_twins

__all__ = ["FAST_PATHS", "fast_paths", "set_fast_path", "use_fast_path", "use_onednn_linears", "CPU_TWINS",
           "optimize_for_cpu", "restore_plain", "shared_weights_copy", "with_cpu_twins"]
