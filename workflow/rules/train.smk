"""Training -> results/<setting>/seed<k>/trajectory.zarr (checkpoints, losses, batch losses)."""


rule train:
    input:
        data=lambda w: dataset_path(run_spec(w.setting)["dataset"]),
        init=init_trajectory,
        src=stage_sources("train"),
    output:
        directory(f"{RESULTS}/{{setting}}/seed{{seed}}/trajectory.zarr"),
    log:
        "logs/train/{setting}/seed{seed}.log",
    benchmark:
        "benchmarks/train/{setting}/seed{seed}.tsv"
    threads: config["threads"]
    resources:
        runtime=runtime("train"),
        mem_mb=mem_mb("train"),
        gpu=config["gpu"],
    params:
        kwargs=train_kwargs,
        io=train_io,
    shell:
        hessvalley("train")


targets(lambda: [path for setting in config["runs"] for path in trajectories(setting)])
