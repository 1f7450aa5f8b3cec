from rung.distributed.ddp import DistInfo, init, is_distributed

__all__ = ["DistInfo", "init", "is_distributed"]
