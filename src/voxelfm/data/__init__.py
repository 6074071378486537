"""Data sources for the pipeline: the synthetic phantom cohort (:mod:`voxelfm.data.phantoms`) and the
prepared-volume store that pre-training reads (:mod:`voxelfm.data.volume_store`)."""
