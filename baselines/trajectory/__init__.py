"""Trajectory matching: expert buffers (:mod:`.buffers`, with the ``gendistill buffers`` command in :mod:`.commands`),
MTT / TESLA (:mod:`.mtt`) and DATM (:mod:`.datm`)."""
