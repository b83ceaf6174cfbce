"""Other formats and tools: ONNX and ``torch.export`` (:mod:`.export`; for the detectors, their backbone + FPN),
Hugging Face transformers (:mod:`.hf_transformers`), hub folders of converted checkpoints (:mod:`.hub`), mmcv's
FLOP count (:mod:`.flops`)."""
