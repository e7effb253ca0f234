"""Searching a bank: exact top-k on the CPU or a device (:mod:`.exact`), calibrated
approximate routes (:mod:`.routes`, :mod:`.index`, :mod:`.hnsw_file`), their calibration
(:mod:`.calibrate`, :mod:`.recall`) and the per-hook choice between them (:mod:`.dispatch`,
:mod:`.query`)."""
