"""Running models on data: the test protocol (:mod:`.inference`, with the banded engine :mod:`.bands`), object
detection with the COCO detectors (:mod:`.detection`: ``detect`` -> ``Detections``), mIoU
evaluation (:mod:`.evaluation`), training (:mod:`.training`), the process group (:mod:`.distributed`) and the
precision table (:mod:`.precision`)."""
