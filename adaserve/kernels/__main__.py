"""`python -m adaserve.kernels`: build the kernels now (make setup does) and print the ISA."""

from adaserve.kernels import cpu_flags, qgemm

print(f"qgemm kernels built for {qgemm().isa()} (cpu flags: {' '.join(cpu_flags())})")
