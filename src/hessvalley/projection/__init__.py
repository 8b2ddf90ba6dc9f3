"""Projected paths: SGD states projected to the valley floor (Wei & Schwab 2020 §2.1.1, A.2).

A state is *projected* by gradient descent on the full training set with the run's learning
rate and momentum (no mini-batch noise) until the full training loss is below
``loss_threshold`` (converged), rises above ``max_loss_rise`` times its start or stops being
finite (diverged), or reaches a step cap; every outcome is recorded, none fails the job. Two
projected states are *line connected* when the training loss at ``n_points`` evenly spaced
points strictly between them, and at both ends, is below the threshold. Between consecutive
checkpoints A (step a) and B (step b) whose projections are not line connected, SGD is
replayed exactly from A to step (a+b)//2, that state projected, and both halves treated the
same way, until every neighbouring pair is connected or sits at adjacent steps (or
``max_depth`` halvings deep). The ordered projected states are the *projected path*.

Conventions (config/README.md, "projection"):
- One loss: the run's loss in eval mode over the whole training set (split A for
  ``train_on: A``), exactly what the training curves report (``Trainer.evaluate``). GD
  minimises this very function (BatchNorm with the state's running statistics, frozen), and
  the threshold, the path and the interpolation points are judged by it.
- Projection GD starts with zero momentum (``reset_momentum``): the projected point depends
  on the parameters alone, not on the noisy SGD velocity.
- Interpolated points interpolate parameters and floating-point buffers (BatchNorm running
  statistics) linearly and evaluate in eval mode.
- A pair with a non-converged end is a failed connection and is not bisected: no finer
  path can connect a point that is not a minimum.
- Each grid checkpoint is projected once per seed, by a grid job; the segment jobs on either
  side of it share that projection.
- Jobs that run for hours resume: finished projections and the GD state of the one in
  progress are saved as they go (``cache``), so a time-limit kill loses minutes.

Modules, in the order a segment job uses them:
- ``plan``: what the stage computes, known from the config (segments, grids); torch-free.
- ``outcomes``: projection status and connection cause codes, their counts; torch-free.
- ``gd``: one GD projection (``project``), its result (``Projection``) and its saved state
  while it runs (``GDProgress``).
- ``interpolation``: losses at points on the line between two projected states.
- ``replay``: exact SGD states at any step between two checkpoints (``SGDStates``).
- ``cache``: finished projections kept on disk, so a killed job resumes (``ProjectionCache``).
- ``grid``: the grid stage (``project_grid``), each grid checkpoint projected once.
- ``bisection``: the recursive bisection of one segment (``PathProjector``).
- ``segment``: the segment stage (``project_segment``), writing the segment store.
- ``gather``: the gather stage (``gather_path``), joining segments into the path; torch-free.
- ``trace``: the trace stage (``path_trace``), the Hessian trace along the path.
- ``claims``: W&S Figs 1, 3, 4's claims tested from the stores; torch-free.

This file imports nothing, so the torch-free modules stay torch-free: config validation and
the workflow import ``plan`` while parsing, and the gather job starts without torch.
"""
