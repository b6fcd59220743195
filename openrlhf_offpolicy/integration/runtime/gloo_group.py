"""The trainer-to-engines weight group of the CPU backend: gloo, with PyNccl's ``broadcast``.

Standard library only at module level; torch is imported when a group is made.
"""

from __future__ import annotations


class GlooBroadcastGroup:
    """The trainer-to-engines weight group on gloo, with PyNccl's ``broadcast(tensor, src, stream)``.

    Upstream's rank 0 and every engine each create one (``stateless_init_process_group``) from the
    same address, port and world size; ranks meet in a ``TCPStore`` hosted by rank 0.
    """

    def __init__(self, master_address: str, master_port: int, rank: int, world_size: int):
        import datetime

        import torch.distributed as dist

        store = dist.TCPStore(master_address, int(master_port), world_size, is_master=rank == 0,
                              timeout=datetime.timedelta(seconds=120))
        self.rank, self.world_size = rank, world_size
        self.store = store
        self.group = dist.ProcessGroupGloo(dist.PrefixStore("openrlhf_offpolicy_weights", store), rank, world_size,
                                           datetime.timedelta(seconds=120))

    def close(self) -> None:
        """Leave together: a barrier, then the group before the store it meets in.

        Left to interpreter exit, the destruction order is arbitrary, and a store host that goes
        while a peer's gloo pair is still open ends in ``terminate called`` (SIGABRT). Ray kills
        upstream's actors without running this; tests and scripts that own a group call it.
        """
        if self.group is None:
            return
        self.group.barrier().wait()
        self.group = None
        self.store = None

    def broadcast(self, tensor, src: int = 0, stream=None):
        import torch
        import torch.distributed as dist

        # gloo has no bf16 (nor int16): every tensor travels as its bytes, through a contiguous view.
        view = tensor.data if tensor.is_contiguous() else tensor.data.contiguous()
        wire = view.reshape(-1).view(torch.uint8)
        opts = dist.BroadcastOptions()
        opts.rootRank = src
        self.group.broadcast([wire], opts).wait()
        if view is not tensor.data:
            tensor.data.copy_(view)
        return tensor
