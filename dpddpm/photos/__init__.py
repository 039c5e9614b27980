"""Groundwork for a second bundled family (issue 20): tiny 8-bit RGB photographs made from real photographs that
packages ship, their likelihood baselines, and the training command of an improved-diffusion UNet on them.

Nothing here is part of ``dpddpm``'s public API yet; import the submodules directly:

- :mod:`dpddpm.photos.data`: the splits (``photos_split``), read from the files shipped in the package; made from
  :mod:`dpddpm.photos.photographs` (the photographs and their licences) and :mod:`dpddpm.photos.crops` (the crops);
- :mod:`dpddpm.photos.baselines`: lossless PNG and WebP bits/dim, and a per-pixel categorical model;
- :mod:`dpddpm.photos.train`: ``python -m dpddpm.photos.train photos-simple|photos-hybrid --out DIR``, built from
  :mod:`~dpddpm.photos.recipe`, :mod:`~dpddpm.photos.trainer`, :mod:`~dpddpm.photos.resume` and
  :mod:`~dpddpm.photos.outputs`.
"""
