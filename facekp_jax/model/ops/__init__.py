"""Kernels that keep the model's function but change how XLA:CPU computes it.

``layers`` hands the network its convolutions, batch norms and max-pools (these fast ones or
Flax's reference ones, same parameters and function); ``conv``, ``norm`` and ``pooling`` hold the
hand-written gradients; ``host_memory`` tunes glibc malloc where a run starts.
"""
