"""The Slurm launcher of conf/hydra/launcher/slurm*.yaml. Hydra instantiates launchers only from classes
defined in hydra_plugins; the behaviour lives in runner.sweeps.slurm."""

from runner.sweeps.slurm import SlurmJobLauncher


class SlurmLauncher(SlurmJobLauncher):
    """Trials as Slurm array jobs, checked against the partition, resumable, failures named by Slurm state."""
