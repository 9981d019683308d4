"""Distributed training: driver side (driver.py) launches N workers as one Spark barrier stage; worker side
(remote.py) runs inside each barrier task. spec.py is the contract between the two; job.py is the train job."""
