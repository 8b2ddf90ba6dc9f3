"""W&S Fig 2a (A.3): SGD from a GD minimum over a grid of batch sizes and learning rates, the
exact spectrum at snapshots -> results/<setting>/seed<k>/equilibrium.zarr, and the figure
results/figures/wei2020_fig2a.pdf (+ .png, + the claim .json).
"""


rule equilibrium_sweep:
    input:
        trajectory=lambda w: trajectory_path(w.setting, w.seed),
        data=lambda w: dataset_path(run_spec(w.setting)["dataset"]),
        src=stage_sources("equilibrium_sweep"),
    output:
        directory(f"{RESULTS}/{{setting}}/seed{{seed}}/equilibrium.zarr"),
    log:
        "logs/equilibrium/{setting}/seed{seed}.log",
    benchmark:
        "benchmarks/equilibrium/{setting}/seed{seed}.tsv"
    threads: config["threads"]
    resources:
        runtime=runtime("equilibrium_sweep"),
        mem_mb=mem_mb("equilibrium_sweep"),
        gpu=config["gpu"],
    params:
        kwargs=lambda w: as_json(
            {
                "sweep": section_spec("equilibrium"),
                "hessian": hessian_kwargs(),
                "setting": w.setting,
                "seed": int(w.seed),
            }
        ),
        io=lambda w, input, output: as_json(
            {"trajectory": input.trajectory, "data": input.data, "output": output[0]}
        ),
    shell:
        hessvalley("equilibrium_sweep")


rule wei2020_fig2a:
    input:
        sweeps=appendix_stores("equilibrium"),
        src=stage_sources("wei2020_fig2a"),
    output:
        pdf=f"{FIGURES}/wei2020_fig2a.pdf",
        json=f"{FIGURES}/wei2020_fig2a.json",
        png=report(
            f"{FIGURES}/wei2020_fig2a.png",
            caption="../report/wei2020_fig2a.rst",
            category="Noise meets curvature",
        ),
    log:
        "logs/figures/wei2020_fig2a.log",
    benchmark:
        "benchmarks/figures/wei2020_fig2a.tsv"
    threads: 1
    resources:
        runtime=runtime("wei2020_fig2a"),
        mem_mb=mem_mb("wei2020_fig2a"),
    params:
        kwargs=lambda w: as_json({"figures": figure_options()}),
        io=lambda w, input, output: as_json(
            {"sweeps": list(input.sweeps), "output": output.pdf}
        ),
    shell:
        hessvalley("wei2020_fig2a")


targets(lambda: appendix_targets("equilibrium", "wei2020_fig2a"))
