"""Xing et al. 2018 §3 (Figs 1-4, Table 1): the training loss between consecutive SGD iterates,
replayed exactly from stored checkpoints, per run and group of epochs ->
results/<run>/seed<k>/interpolation/<group>.zarr; Fig 1 -> results/figures/xing2018_fig1.pdf,
Table 1 and Fig 4 -> results/figures/xing2018_table1.pdf and results/tables/xing2018_table1.csv
(+ .png, + the claims .json).
"""


rule iterate_interpolation:
    input:
        trajectory=lambda w: trajectory_path(w.setting, w.seed),
        data=lambda w: dataset_path(run_spec(w.setting)["dataset"]),
        src=stage_sources("iterate_interpolation"),
    output:
        directory(f"{RESULTS}/{{setting}}/seed{{seed}}/interpolation/{{group}}.zarr"),
    log:
        "logs/{setting}/seed{seed}/interpolation/{group}.log",
    benchmark:
        "benchmarks/{setting}/seed{seed}/interpolation/{group}.tsv"
    wildcard_constraints:
        group=r"epochs?_[0-9-]+",
    threads: config["threads"]
    resources:
        runtime=runtime("iterate_interpolation"),
        mem_mb=mem_mb("iterate_interpolation"),
        gpu=config["gpu"],
    params:
        kwargs=lambda w: as_json(
            {
                "barriers": {
                    k: config["barriers"][k] for k in barriers_config.STAGE_KEYS
                },
                "hessian": section_hessian("barriers"),
                "setting": w.setting,
                "seed": int(w.seed),
                "epochs": interpolation_epochs(w),
            }
        ),
        io=lambda w, input, output: as_json(
            {"trajectory": input.trajectory, "data": input.data, "output": output[0]}
        ),
    shell:
        hessvalley("iterate_interpolation")


rule xing2018_fig1:
    input:
        stores=lambda w: interpolation_stores(config["barriers"]["runs"][:1]),
        src=stage_sources("xing2018_fig1"),
    output:
        pdf=f"{FIGURES}/xing2018_fig1.pdf",
        json=f"{FIGURES}/xing2018_fig1.json",
        png=report(
            f"{FIGURES}/xing2018_fig1.png",
            caption="../report/xing2018_fig1.rst",
            category="Barriers along SGD",
        ),
    log:
        "logs/figures/xing2018_fig1.log",
    benchmark:
        "benchmarks/figures/xing2018_fig1.tsv"
    threads: 1
    resources:
        runtime=runtime("xing2018_fig1"),
        mem_mb=mem_mb("xing2018_fig1"),
    params:
        kwargs=lambda w: as_json(
            {
                "figures": figure_options(),
                "barriers": barriers_figure_keys("xing2018_fig1"),
            }
        ),
        io=lambda w, input, output: as_json(
            {"stores": list(input.stores), "output": output.pdf}
        ),
    shell:
        hessvalley("xing2018_fig1")


rule xing2018_table1:
    input:
        stores=lambda w: interpolation_stores(config["barriers"]["runs"]),
        src=stage_sources("xing2018_table1"),
    output:
        pdf=f"{FIGURES}/xing2018_table1.pdf",
        json=f"{FIGURES}/xing2018_table1.json",
        png=report(
            f"{FIGURES}/xing2018_table1.png",
            caption="../report/xing2018_table1.rst",
            category="Barriers along SGD",
        ),
        table=f"{RESULTS}/tables/xing2018_table1.csv",
    log:
        "logs/figures/xing2018_table1.log",
    benchmark:
        "benchmarks/figures/xing2018_table1.tsv"
    threads: 1
    resources:
        runtime=runtime("xing2018_table1"),
        mem_mb=mem_mb("xing2018_table1"),
    params:
        kwargs=lambda w: as_json(
            {
                "figures": figure_options(),
                "barriers": barriers_figure_keys("xing2018_table1"),
            }
        ),
        io=lambda w, input, output: as_json(
            {"stores": list(input.stores), "output": output.pdf, "table": output.table}
        ),
    shell:
        hessvalley("xing2018_table1")


targets(barriers_targets)
