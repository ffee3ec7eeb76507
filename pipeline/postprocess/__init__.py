"""CAM post-processing: PAR (``par``, Eqs. 13-15), dense CRF (``crf``), AffinityNet random walk (``psa``)
and pseudo labels from scores (``labels``, Eq. 16)."""
