from rung.logging.logger import Logger, read_metrics

__all__ = ["Logger", "read_metrics"]
