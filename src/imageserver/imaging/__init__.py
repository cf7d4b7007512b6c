"""The imaging core: a frame at full bit depth to a reduced view, its statistics, and an image.

Data flows through the modules in this order: `geometry` (which source box feeds each output
pixel), `reduce` (max-pooling with the numba loops of `kernels`; `reference` is the plain NumPy
twin the tests compare with), `stats` (radial shells, spot count), `contrast` and `colormaps`
(levels and 8-bit colour), `label` (the banner) and `encode` (JPEG and PNG bytes).
"""
