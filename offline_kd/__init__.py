"""offline-kd: run a CTC teacher once, cache its outputs in Zarr v3, distil students from the cache."""

__version__ = "0.1.0"
