"""Many encrypted images over many worker processes and machines, on Ray.

    from ckksnet.deploy.distributed import run_batch
    report = run_batch("art/server_plan.ckksnet", "keys/eval", "cts/", "out/", workers=2)
    report.to_dict()    # per image: status, worker, seconds; per worker: key loads, images, memory

- :mod:`~ckksnet.deploy.distributed.worker`: :class:`InferenceWorker`, the plan and one client's
  evaluation keys loaded once per process, then one ciphertext after another;
- :mod:`~ckksnet.deploy.distributed.driver`: :func:`run_batch`, a Ray actor per worker, fan-out in
  input order, retries when a worker dies, memory declared to Ray (what is shipped where: the
  module's docstring);
- :mod:`~ckksnet.deploy.distributed.batch`: the output folder as the batch's state (resume by running
  the same command again);
- :mod:`~ckksnet.deploy.distributed.runner`: whether Ray pays for its start-up (``use_ray``), and
  :mod:`~ckksnet.deploy.distributed.local`: the batch in this process when it does not.

Command line: ``ckksnet run --plan P --eval-keys K --in CT_DIR --out OUT_DIR --workers N
[--ray ADDRESS] [--use-ray auto|always|never]``.
"""
from ckksnet.deploy.distributed.batch import BatchReport, ImageResult, list_inputs
from ckksnet.deploy.distributed.driver import DistributedError, run_batch, worker_memory_gib
from ckksnet.deploy.distributed.worker import InferenceWorker

__all__ = ["BatchReport", "DistributedError", "ImageResult", "InferenceWorker", "list_inputs", "run_batch",
           "worker_memory_gib"]
