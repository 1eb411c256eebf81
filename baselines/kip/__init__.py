"""KIP (Nguyen et al., ICLR 2021 / NeurIPS 2021): the method (:mod:`.method`) and its NTK kernels (:mod:`.kernels`)."""
