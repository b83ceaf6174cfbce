"""UPerNet on the Iwin backbone, an smp ``SegmentationModel``: :mod:`.model` wires encoder, decoder and heads;
:mod:`.decoder` holds the decoder and heads; :mod:`.card` the model card ``save_pretrained`` writes."""
from .decoder import FCNHead, IwinUPerNetDecoder, ResizeToInputHead
from .model import AUX_CHANNELS, IwinUPerNet

__all__ = ["IwinUPerNet", "IwinUPerNetDecoder", "ResizeToInputHead", "FCNHead", "AUX_CHANNELS"]
