"""Step-decoupled (Turbo++) distillation: the trainer and the toy world that proves it on a CPU.
Uses the engine; the engine and the nodes never import this package."""
