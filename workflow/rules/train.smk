"""Training -> results/<setting>/seed<k>/trajectory.zarr (checkpoints, losses, batch losses)."""


def init_trajectory(wildcards):
    parent = run_spec(wildcards.setting)["init_from"]
    return [] if parent is None else [trajectory_path(parent, wildcards.seed)]


def training_spec(setting):
    """The run's config minus its seed list: adding a seed must not re-run the others."""
    return {k: v for k, v in run_spec(setting).items() if k != "seeds"}


def train_kwargs(wildcards):
    return as_json(
        {
            "spec": training_spec(wildcards.setting),
            "dataset_spec": config["datasets"][run_spec(wildcards.setting)["dataset"]],
            "setting": wildcards.setting,
            "seed": int(wildcards.seed),
        }
    )


def train_io(wildcards, input, output):
    init = input.init[0] if input.init else None
    return as_json({"data": input.data, "init": init, "output": output[0]})


rule train:
    input:
        data=lambda w: dataset_path(run_spec(w.setting)["dataset"]),
        init=init_trajectory,
        src=src("train.py", "data.py", "losses.py", "flat.py", "models/__init__.py"),
    output:
        directory(f"{RESULTS}/{{setting}}/seed{{seed}}/trajectory.zarr"),
    log:
        "logs/train/{setting}/seed{seed}.log",
    benchmark:
        "benchmarks/train/{setting}/seed{seed}.tsv"
    threads: config["threads"]
    resources:
        gpu=config["gpu"],
    params:
        kwargs=train_kwargs,
        io=train_io,
    shell:
        hessvalley("hessvalley.train:train_run", device=True)


@targets
def trajectory_targets():
    return [path for setting in config["runs"] for path in trajectories(setting)]
