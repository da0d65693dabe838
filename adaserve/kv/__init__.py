from adaserve.kv.manager import BlockPool, KVCacheManager

__all__ = ["BlockPool", "KVCacheManager"]
