"""Reading and writing files: checkpoints (safely, with readable errors), what a user names as weights, images,
and the one atomic writer of every file the package writes."""
from .checkpoint import CheckpointError, check_state_dict_fits, read_checkpoint
from .files import fsync, write_atomic
from .images import ImageTooLargeError, load_image
from .locate import WeightsLocation, locate_weights, read_weights

__all__ = ["CheckpointError", "check_state_dict_fits", "read_checkpoint", "fsync", "write_atomic",
           "ImageTooLargeError", "load_image", "WeightsLocation", "locate_weights", "read_weights"]
