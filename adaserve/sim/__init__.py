"""Discrete-event simulator: the engine's own EngineCore (scheduler, KV manager, policies,
speculation, stop checks) run by a simulated runner on a simulated clock, with a cost model and an
acceptance model instead of models.

    runner.py      SimRunner: a step's passes priced by the cost model; SimClock
    proposer.py    a Proposer that grows candidate trees from the acceptance model
    acceptance.py  what the draft offers at a node and what the target picks (recorded or parametric)
    simulator.py   a workload's arrivals on the simulated clock, around EngineCore.step
    recorder.py    `simulate record`'s observer of a real engine's verified trees
    roofline.py    GPU cost models from hardware specs and model shapes
    workloads.py   workloads in token counts, from bench results, workload files or a WorkloadSpec
    cli.py         `adaserve simulate`
"""
