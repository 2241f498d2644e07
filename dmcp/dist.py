"""Process group for data-parallel training.  ``init('none')`` gives the
single-process group used everywhere by default."""
import numpy as np

from .units import UserError


class SingleProcess:
    rank, world_size = 0, 1

    def barrier(self):
        pass

    def broadcast_model(self, net, mutator=None):
        pass

    def allreduce_grads(self, params):
        pass

    def sum_counts(self, correct, total):
        return np.asarray(correct), int(total)


def init(launcher="none"):
    if launcher in (None, "none"):
        return SingleProcess()
    raise UserError(f"--launcher {launcher}: distributed training is not available in this build")
