"""What the runs show: PNG figures (:mod:`.plots`, flat ``plot_*`` functions) and the study's ``results.json`` schema
and self-contained ``report.html`` (:mod:`.report`, rendered from the package data ``rlvr_linear/templates``; the
regime map's section is read from its ``regime_map.json``).

Importing this package loads nothing; import the modules by name (``plots`` loads matplotlib, ``report`` Jinja2).

May import: ``errors``, ``runtime``, ``io``.
"""
