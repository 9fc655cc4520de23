"""The `tailor` command line: thin subcommands over the lab, the operator
and the datapath (the top room: nothing imports it)."""
