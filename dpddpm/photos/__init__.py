"""Groundwork for a second bundled family (issue 20): tiny 8-bit RGB photographs made from real photographs that
packages ship, their likelihood baselines, and the training command of an improved-diffusion UNet on them.

Nothing here is part of ``dpddpm``'s public API yet; import the submodules directly:

- :mod:`dpddpm.photos.data`: the photographs, their licences, the crops and the splits (``photos_split``);
- :mod:`dpddpm.photos.baselines`: lossless PNG and WebP bits/dim, and a per-pixel categorical model;
- :mod:`dpddpm.photos.train`: ``python -m dpddpm.photos.train photos-simple|photos-hybrid --out DIR``.
"""
