"""Cost plan of a config before any job runs (``hessvalley plan``).

A short calibration on the compute device measures what the workflow's stages are made of
(an SGD step, a full-batch gradient, an evaluation pass and a Hessian-vector product per
sample, the activation memory per sample) for each model of the config
(``hessvalley.costs.calibration``, cached per device); the estimator multiplies them by the
counts the config fixes (``hessvalley.costs.estimate``, torch-free), and the report sets
each job against its SLURM time and memory request (``hessvalley.costs.report``), so a
run that cannot finish within its limits is refused before it starts rather than killed
after days.
"""
