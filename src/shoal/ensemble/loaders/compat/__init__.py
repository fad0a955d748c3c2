"""Stand-ins for the modules a remote_runner configuration uses (MIT-LL SPARTA's
spar_python/remote_runner): config_classes, config_util, and remote_runner itself.

While a configuration runs, these are importable under their original names, so a
configuration that imports them, or one that uses the names remote_runner puts in its
namespace (config, Component, util, options, extra_options), runs unchanged.
"""
