"""The kernel's side of one cell: what it reads and binds (analysis, definitions), the request
that carries it (packing), and bringing its result home (outcome, interrupts)."""
