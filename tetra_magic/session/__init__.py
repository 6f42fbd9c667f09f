"""Sessions: values that stay on one worker between cells. The model the kernel keeps, the
requests that reach the worker, the hooks a cell's run calls, and the `%tetra` commands."""
