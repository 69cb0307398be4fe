"""Where data is in files: CXI/HDF5 frames, CrystFEL geometry and streams, labels, outputs.

Nothing here knows where pixels are in space; that is :mod:`hpcdiff.geometry`.
"""
