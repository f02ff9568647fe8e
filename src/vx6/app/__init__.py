"""The programs: the command line and its output, `vx6 run` as a process, the demo and
the local multi-node network it (and the tests) start."""
