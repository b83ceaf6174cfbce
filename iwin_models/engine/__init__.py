"""Running models on data: the test protocol (:mod:`.inference`, with the banded engine :mod:`.bands`), mIoU
evaluation (:mod:`.evaluation`), training (:mod:`.training`), the process group (:mod:`.distributed`) and the
precision table (:mod:`.precision`)."""
