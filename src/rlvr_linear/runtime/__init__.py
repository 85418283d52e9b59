"""The process around the computation: how many CPU threads torch uses (:mod:`.threads`), commands run in a process
group that ends with us (:mod:`.procgroup`, also ``python -m rlvr_linear.runtime.procgroup``) and TRL's fused LM head
made to score only labelled positions on CPU (:mod:`.trl_cpu`).

Importing this package loads nothing; import the modules by name.

May import: ``errors``.
"""
