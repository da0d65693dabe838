"""Discrete-event simulator: the engine's own scheduler, KV manager, speculation decoder and
policies, driven by a simulated clock, a cost model and an acceptance model instead of models.

    acceptance.py  what the draft offers at a node and what the target picks (recorded or parametric)
    proposer.py    a Proposer that grows candidate trees from the acceptance model
    roofline.py    GPU cost models from hardware specs and model shapes
    simulator.py   the loop: schedule -> speculate + select -> advance the clock -> verify
    workloads.py   workloads in token counts, from bench results, workload files or a WorkloadSpec
    cli.py         `adaserve simulate`
"""
