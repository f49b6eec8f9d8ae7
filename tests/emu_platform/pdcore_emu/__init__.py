"""An emulated accelerator platform for pdcore's tests (see the folder's README)."""
