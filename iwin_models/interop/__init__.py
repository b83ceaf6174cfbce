"""Other formats and tools: ONNX and ``torch.export`` (:mod:`.export`), Hugging Face transformers
(:mod:`.hf_transformers`), hub folders of converted checkpoints (:mod:`.hub`), mmcv's FLOP count (:mod:`.flops`)."""
