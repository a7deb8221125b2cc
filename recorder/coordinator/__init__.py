"""The coordinator's jobs, each in a module: taking partitions over and giving them up
(`rebalance`), the fetch loop that feeds the sinks (`intake`), the health the probes read
(`health`), and what they need from outside (`ports`). `recorder.pipeline` wires them."""
