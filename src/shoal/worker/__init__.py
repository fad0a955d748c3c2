"""The worker side: detect this host's resources, and run, measure and police assigned commands."""
