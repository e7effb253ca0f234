"""``python -m tl_latentlens``: the ``tl-latentlens`` command line (also under ``torchrun``:
``torchrun --nproc_per_node=2 -m tl_latentlens build-bank ...``)."""

from tl_latentlens.apps.cli import run

if __name__ == "__main__":
    run()
