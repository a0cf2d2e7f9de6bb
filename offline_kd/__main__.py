"""`python -m offline_kd ...` (also what `torchrun -m offline_kd` runs)."""

from offline_kd.cli import main

if __name__ == "__main__":
    main()
