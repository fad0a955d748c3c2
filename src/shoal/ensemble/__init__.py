"""Ensembles: commands pinned to named hosts, started in stages at one instant, with their files."""
