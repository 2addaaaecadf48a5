"""The built-in pattern families, one module each (found by listing this package).

Adding a family is adding one module here (or anywhere, with ``@register_family``):
see :mod:`kernelatlas.atlas.family` for what a definition provides.
"""
