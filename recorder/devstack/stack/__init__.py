"""`scripts/stack`: the dev services kept running between commands, with state in `.stack/`.

`state` owns the state directory; one module per service (kafka, postgres, timescale,
timescale_full, s3) says how to configure, start, probe, stop and remove it from its saved
state, built on the service modules one level up; `cli` is the command line.
"""
