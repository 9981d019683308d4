"""Distributed training. trainer.py is the train job (driver side, one flow for every task); heads.py holds what
differs between binary, multiclass and regression models; driver.py launches N workers as one Spark barrier
stage; remote/ is what runs in the barrier tasks (task.py) and the training processes they start (worker.py,
backends.py). spec.py is the contract between the sides; serving.py is the logged scoring model (pyfunc.py)."""
