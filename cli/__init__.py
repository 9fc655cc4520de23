"""The `tailor` command line: thin subcommands over the operator and datapath."""
