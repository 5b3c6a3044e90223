"""Multirun: ``stm3 train -m seed=1,2,3 model.contrastive=released,repaired`` runs the cartesian grid of the values.

:mod:`~stm3_lightning.multirun.sweep` parses the sweep values, :mod:`~stm3_lightning.multirun.jobs` plans one run
folder per job and runs jobs one after the other, :mod:`~stm3_lightning.multirun.launcher_config` validates the
``launcher=`` choice and its keys, :mod:`~stm3_lightning.multirun.submitit_launcher` submits the jobs through
submitit (local processes or SLURM) and :mod:`~stm3_lightning.multirun.command` ties them together.
"""
