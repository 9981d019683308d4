"""The remote side of distributed training, split by where each part runs (the driver side is driver.py):

  task.py      the barrier task, in the Spark executor's Python worker: ranks, attempt registration with the
               driver, the backend's environment, and the training process it starts and waits for;
  worker.py    the training process (`python -m pipelines.training.remote.worker`): backend start, Petastorm
               shard, model.fit with per-epoch checkpoints, the rank's WorkerResult;
  torch_worker.py  the PyTorch training process (training.framework pytorch; same entry, task file and result):
               DistributedDataParallel, the signed store its process group meets in;
  backends.py  Horovod over gloo, TensorFlow MultiWorkerMirroredStrategy and torch.distributed (torch-ddp) behind one
               small interface: the environment a task gives its process, and what the process does with it.
"""
